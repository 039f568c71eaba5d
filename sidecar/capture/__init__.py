"""Transparent capture: the nat rules that send the pod's TCP to the sidecar's listeners.

``rules`` builds the rules from the config and reads ``iptables-save`` text, without touching the
system; ``iptables`` runs the tools (``iptables-save``, ``iptables-restore``) in the current network
namespace for ``sidecar iptables``.
"""
