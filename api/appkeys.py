"""Typed keys for what the app holds (aiohttp's AppKey)."""

from __future__ import annotations

import asyncpg
import redis.asyncio as redis
from aiohttp import web

from api.auth import AccessControl
from api.catalogue import CatalogueViews
from api.chain_today import ChainToday
from api.report_cache import ReportCache
from api.returns import ReturnsIntake
from api.sales import SalesIntake
from api.stores_today import StoresToday
from shared.queue import QueueKeys
from shared.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
PG_POOL = web.AppKey("pg_pool", asyncpg.Pool)
REDIS = web.AppKey("redis", redis.Redis)
QUEUE_KEYS = web.AppKey("queue_keys", QueueKeys)
INTAKE = web.AppKey("intake", SalesIntake)
RETURNS = web.AppKey("returns", ReturnsIntake)
ACCESS_CONTROL = web.AppKey("access_control", AccessControl)
REPORT_CACHE = web.AppKey("report_cache", ReportCache)
STORES_TODAY = web.AppKey("stores_today", StoresToday)
CHAIN_TODAY = web.AppKey("chain_today", ChainToday)
CATALOGUE_VIEWS = web.AppKey("catalogue_views", CatalogueViews)
