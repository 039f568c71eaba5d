"""The configuration directory as immutable, typed data.

``load_directory(DIR)`` reads every document of DIR and returns a ``Snapshot`` or raises a
``ConfigError`` whose ``issues`` say ``FILE:LINE: field.path: message`` for every problem.
``schema`` holds the models of each kind, ``snapshot`` the validated whole, ``loader`` the way there;
``notation`` reads durations, sizes and addresses, and ``fields`` is the validator behind the models.
"""

from .loader import ConfigError, ConfigIssue, load_directory
from .schema import (
    Address,
    AdminConfig,
    EndpointConfig,
    HashOn,
    HealthCheck,
    InboundConfig,
    Limits,
    OutboundConfig,
    OutlierDetection,
    RouteConfig,
    RouteMatch,
    RouteRule,
    RouteTarget,
    ServiceConfig,
    ServiceTls,
    SidecarConfig,
    SidecarTls,
    Timeouts,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)
from .snapshot import Snapshot, content_version

__all__ = [
    "Address",
    "AdminConfig",
    "ConfigError",
    "ConfigIssue",
    "EndpointConfig",
    "HashOn",
    "HealthCheck",
    "InboundConfig",
    "Limits",
    "OutboundConfig",
    "OutlierDetection",
    "RouteConfig",
    "RouteMatch",
    "RouteRule",
    "RouteTarget",
    "ServiceConfig",
    "ServiceTls",
    "SidecarConfig",
    "SidecarTls",
    "Snapshot",
    "Timeouts",
    "content_version",
    "format_duration",
    "format_size",
    "load_directory",
    "parse_duration",
    "parse_size",
]
