"""The demos (``fit3d-hub demo --method NAME``): one module per method, each with
``Settings``, ``quick(settings)`` and ``run(output, settings)``, on synthetic scenes, offline,
on CPU. They sit above ``training`` and ``eval`` (they run both) and are reached from the
package through ``fit3d_hub.methods`` only."""
