"""Elastic runs: supervise a ``dtrain train`` job and relaunch it from its last good checkpoint when a rank
or a node fails (``dtrain launch --max-restarts``, ``dtrain cluster run --max-restarts``).

:mod:`.supervisor` is the loop (attempts, causes, restarts, signals); :mod:`.frontends` says where an attempt
runs. The ranks' side (their records, the restart record) is :mod:`dtrain.train.elastic`.
"""

from .frontends import cluster_elastic, discover_hosts, launch_elastic, parse_hosts, split_train_command
from .supervisor import Attempt, ElasticError, Launch, diagnose, supervise, train_args_for

__all__ = ["Attempt", "ElasticError", "Launch", "cluster_elastic", "diagnose", "discover_hosts", "launch_elastic",
           "parse_hosts", "split_train_command", "supervise", "train_args_for"]
