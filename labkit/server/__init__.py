"""Real servers for the lab: the embedded default, throwaway topologies, capabilities."""

from labkit.server.binaries import Engine, available_engines, cli_path, find_engine, module_paths
from labkit.server.capabilities import Capabilities, capabilities, tls_built_in
from labkit.server.process import Server, mask
from labkit.server.topology import cluster, nodes, replicated, sentinel, spawn

__all__ = [
    "Capabilities", "Engine", "Server", "available_engines", "capabilities", "cli_path", "cluster", "find_engine",
    "mask", "module_paths", "nodes", "replicated", "sentinel", "spawn", "tls_built_in",
]
