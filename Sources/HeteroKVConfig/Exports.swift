// Readers of the cluster file get the settings they read into.
@_exported import HeteroKVSettings
