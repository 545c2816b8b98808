// Daemons serve with the control plane's security.
@_exported import HeteroKVControlPlane
