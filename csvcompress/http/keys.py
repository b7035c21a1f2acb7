"""The handle on the running service that handlers reach through the app: a leaf module.

Handlers import `SERVICE` from here, never from `app.py`, so the HTTP modules do not
import the module that wires them (no import cycle).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from csvcompress.config import Settings
from csvcompress.jobs.dispatcher import Dispatcher
from csvcompress.metrics import Metrics
from csvcompress.pipeline.netguard import NetGuard
from csvcompress.pipeline.thumbnails import Thumbnails
from csvcompress.retention import Retention
from csvcompress.storage import CsvFiles, LocalFiles, Storage
from csvcompress.store.base import Store
from csvcompress.webhooks import WebhookSender


@dataclass
class Service:
    """Everything a handler may need, created on start-up and closed on clean-up."""

    settings: Settings
    store: Store
    storage: Storage
    guard: NetGuard
    session: aiohttp.ClientSession
    pool: ThreadPoolExecutor
    dispatcher: Dispatcher
    webhooks: WebhookSender
    metrics: Metrics
    retention: Retention
    thumbnails: Thumbnails
    # Where the uploaded and output CSVs are kept (on disk, or in S3 in distributed mode).
    files: CsvFiles = field(default_factory=LocalFiles)


SETTINGS = web.AppKey("settings", Settings)
SERVICE = web.AppKey("service", Service)
