"""The OpenAPI 3 description of every route (a test fails if a route is missing here).

The bodies of sales, returns and the catalogue are generated from the msgspec Structs that
decode and encode them (`_generated_schemas`; the fields' descriptions live on the Structs), so
the two cannot drift; the rest, and the prose around them, is written here.
"""

from __future__ import annotations

import functools

import msgspec

from api.catalogue import CatalogueAnswer
from api.returns import ReturnAnswer
from api.sales import SaleAnswer
from api.validation import MAX_BATCH, ReturnIn, ReturnOfSale, SaleIn
from shared.catalogue import ItemEdit, StoreEdit

_ERROR = {"$ref": "#/components/schemas/Error"}
# An idempotency key: printable, no control characters (as api.validation.IdempotencyKey).
_KEY_PATTERN = r"^[^\x00-\x1f\x7f]+$"


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict:
    return _json(_ERROR, description)


def _openapi_30(schema):
    """msgspec's JSON Schema as OpenAPI 3.0 says it: `anyOf [X, null]` is X, nullable."""
    if isinstance(schema, list):
        return [_openapi_30(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {k: _openapi_30(v) for k, v in schema.items() if k != "title"}
    variants = schema.get("anyOf")
    if variants and {"type": "null"} in variants:
        others = [v for v in variants if v != {"type": "null"}]
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        schema = (
            {**rest, **others[0], "nullable": True} if len(others) == 1 else {**rest, "anyOf": others, "nullable": True}
        )
    return schema


def _generated_schemas() -> dict:
    _, components = msgspec.json.schema_components(
        (SaleIn, SaleAnswer, ReturnIn, ReturnOfSale, ReturnAnswer, ItemEdit, StoreEdit, CatalogueAnswer),
        ref_template="#/components/schemas/{name}",
    )
    return _openapi_30(components)


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


_CSV_BODY = {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}
_CSV_ANSWER = {"description": "CSV with a header row", "content": {"text/csv": {"schema": {"type": "string"}}}}
_ID_PARAM = [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}]


def _catalogue_paths() -> dict:
    paths: dict = {
        "/catalogue/": {
            "get": {
                "summary": "The catalogue as tills keep it: items with their price now and the scheduled ones, "
                "stores, retirements. Send If-None-Match with the last ETag: 304 when nothing changed. "
                "`since=V` (a `version` seen before): only what changed after V.",
                "parameters": [
                    {"name": "since", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        **_json(_ref("CatalogueAnswer"), "The catalogue"),
                        "headers": {"ETag": {"schema": {"type": "string"}}},
                    },
                    "304": {"description": "Unchanged since the ETag given in If-None-Match"},
                    "400": _error("Bad parameters"),
                    "401": _error("No or unknown key"),
                },
            }
        }
    }
    for kind, one, edit in (("items", "item", "ItemEdit"), ("stores", "store", "StoreEdit")):
        errors = {
            "400": _error("Malformed body"),
            "401": _error("No or unknown key"),
            "403": _error("Not an admin"),
            "422": _json(_ref("BatchErrors"), "Something cannot be done (the reasons)"),
        }
        shown = {"type": "object", "description": f"The {one} as GET /catalogue/ shows it"}
        paths[f"/catalogue/{kind}/"] = {
            "post": {
                "summary": f"Create an {one}" if one == "item" else f"Open a {one}",
                "security": [{"bearer": []}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(edit)}}},
                "responses": {"201": _json(shown, "Created"), **errors, "409": _error("The id is taken")},
            }
        }
        paths[f"/catalogue/{kind}/{{id}}"] = {
            "patch": {
                "summary": f"Change an {one}: fields left out stay"
                + (" (a price takes effect at price_from, or now)" if one == "item" else ""),
                "security": [{"bearer": []}],
                "parameters": _ID_PARAM,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(edit)}}},
                "responses": {"200": _json(shown, "Changed"), **errors, "404": _error(f"No such {one}")},
            },
            "delete": {
                "summary": f"Retire the {one} now: no sale dated from now on; history and reports stay",
                "security": [{"bearer": []}],
                "parameters": _ID_PARAM,
                "responses": {"200": _json(shown, "Retired"), **errors, "404": _error(f"No such {one}")},
            },
        }
        paths[f"/catalogue/{kind}.csv"] = {
            "get": {
                "summary": f"Every {one} as CSV (imports back unchanged)",
                "responses": {"200": _CSV_ANSWER, "401": _error("No or unknown key")},
            },
            "post": {
                "summary": f"Create or change {kind} from CSV (header: "
                + ("id,name,price[,price_from][,retired_at]" if one == "item" else "id,address[,retired_at]")
                + "; an empty id is a new one): all or nothing, errors by line",
                "security": [{"bearer": []}],
                "requestBody": _CSV_BODY,
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"imported": {"type": "integer"}, "version": {"type": "integer"}},
                        },
                        "Imported",
                    ),
                    **errors,
                    "413": _error("Over 32 MiB or 200,000 lines"),
                },
            },
        }
    return paths


def _tills_path() -> dict:
    till = {
        "type": "object",
        "required": [
            "till_id",
            "store_id",
            "label",
            "last_contact",
            "silent_seconds",
            "pending",
            "oldest_pending",
            "clock_offset",
            "status_at",
            "store_open",
            "silent",
            "behind",
            "clock_off",
        ],
        "properties": {
            "till_id": {"type": "integer", "description": "The till: the id of its first pos key"},
            "store_id": {"type": "integer"},
            "label": {"type": "string"},
            "last_contact": {"type": "string", "format": "date-time", "nullable": True},
            "silent_seconds": {
                "type": "integer",
                "description": "Since the last contact (or, never heard from, since the key was issued)",
            },
            "pending": {"type": "integer", "nullable": True, "description": "Sales in its spool, as it last said"},
            "oldest_pending": {"type": "string", "format": "date-time", "nullable": True},
            "clock_offset": {"type": "number", "nullable": True, "description": "Seconds, server minus till"},
            "status_at": {
                "type": "string",
                "format": "date-time",
                "nullable": True,
                "description": "When it last sent a usable X-Till-Status header",
            },
            "store_open": {"type": "boolean"},
            "silent": {"type": "boolean", "description": "No contact for over silent_minutes while its store is open"},
            "behind": {
                "type": "boolean",
                "description": "When it last said so, its oldest pending sale was over behind_minutes old, "
                "or over behind_pending sales were pending",
            },
            "clock_off": {"type": "boolean", "description": "|clock_offset| over clock_off_seconds"},
        },
    }
    answer = {
        "type": "object",
        "required": ["tills_known", "note", "now", "thresholds", "tills"],
        "properties": {
            "tills_known": {"type": "boolean", "description": "false without AUTH_REQUIRED=true: no tills then"},
            "note": {"type": "string", "nullable": True},
            "now": {"type": "string", "format": "date-time"},
            "thresholds": {
                "type": "object",
                "required": ["silent_minutes", "behind_minutes", "behind_pending", "clock_off_seconds"],
                "properties": {
                    name: {"type": "integer"}
                    for name in ("silent_minutes", "behind_minutes", "behind_pending", "clock_off_seconds")
                },
            },
            "tills": {"type": "array", "items": till},
        },
    }
    return {
        "get": {
            "summary": "Every till (active pos key) with its last contact, spool backlog and clock offset, "
            "problems first (silent, behind, clock off). CSV: the tills",
            "parameters": [
                {
                    "name": "silent_minutes",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 10080, "default": 15},
                },
                {"name": "store_id", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 2147483647}},
                _FORMAT,
            ],
            "responses": {
                "200": {
                    "description": "The tills",
                    "content": {"application/json": {"schema": answer}, "text/csv": {"schema": {"type": "string"}}},
                },
                "400": _error("Bad silent_minutes, store_id or format"),
                "503": _error("Redis does not answer"),
            },
        }
    }


_UNAVAILABLE = {
    "description": "Redis or PostgreSQL unavailable, or the queue over its limit; retry after Retry-After seconds",
    "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    "content": {"application/json": {"schema": _ERROR}},
}
_ADMIN_ERRORS = {
    "400": _error("Bad parameters"),
    "401": _error("No bearer token"),
    "403": _error("Wrong token, or no ADMIN_TOKEN configured"),
    "503": _UNAVAILABLE,
}
_FORMAT = {
    "name": "format",
    "in": "query",
    "required": False,
    "description": "csv for CSV with a header row (or send Accept: text/csv); default json",
    "schema": {"type": "string", "enum": ["json", "csv"]},
}
_MONTH_PARAMS = [
    {
        "name": "mm",
        "in": "query",
        "description": "Month 1..12; default the current one. "
        "Without year: the most recent month with that number that has begun.",
        "schema": {"type": "integer", "minimum": 1, "maximum": 12},
    },
    {"name": "year", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 9999}},
    {
        "name": "gg",
        "in": "query",
        "description": "Alias of year",
        "schema": {"type": "integer", "minimum": 1, "maximum": 9999},
    },
]


_PERIOD_PARAMS = [
    {
        "name": "from",
        "in": "query",
        "description": "First day of the period (REPORT_TIMEZONE), with `to`; instead of mm/year",
        "schema": {"type": "string", "format": "date"},
    },
    {
        "name": "to",
        "in": "query",
        "description": "Last day of the period, included, with `from`",
        "schema": {"type": "string", "format": "date"},
    },
]


_PERIOD_MEASURES = {
    "income": {"type": "integer", "description": "What the tills charged, net of refunds"},
    "units": {"type": "integer", "description": "Net of units returned"},
    "sales": {"type": "integer"},
    "returns": {"type": "integer"},
    "refunds": {"type": "integer", "description": "Money given back for returns"},
    "discounts": {
        "type": "integer",
        "description": "Given off the list price on the period's sales: (list price - unit_price) x quantity "
        "(negative where a till charged a price it had not yet seen lowered)",
    },
}


def _table(schema: dict, description: str) -> dict:
    """A report answer: JSON by default, CSV on request."""
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}, "text/csv": {"schema": {"type": "string"}}},
    }


def _rows(name: str) -> dict:
    return {"type": "array", "items": {"$ref": f"#/components/schemas/{name}"}}


_CNT = {
    "name": "cnt",
    "in": "query",
    "required": False,
    "description": "How many rows (default 10)",
    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
}
_COUNT_PARAMS = [
    {"name": "items", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 50}},
    {"name": "stores", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 50}},
    {"name": "sales", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 10000000, "default": 3600}},
]
_ADMIN_OK = _json(
    {
        "type": "object",
        "required": ["status", "items", "stores", "sales"],
        "properties": {
            "status": {"type": "string"},
            "items": {"type": "integer"},
            "stores": {"type": "integer"},
            "sales": {"type": "integer"},
        },
    },
    "Done; the counts of rows now in the tables",
)


def _admin(summary: str, with_counts: bool) -> dict:
    operation = {"summary": summary, "security": [{"bearer": []}], "responses": {"200": _ADMIN_OK, **_ADMIN_ERRORS}}
    if with_counts:
        operation["parameters"] = _COUNT_PARAMS
    return operation


def _admin_post(summary: str, with_counts: bool) -> dict:
    operation = _admin(summary, with_counts)
    if with_counts:
        operation["requestBody"] = {
            "required": False,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {p["name"]: p["schema"] for p in _COUNT_PARAMS},
                    }
                }
            },
        }
    return operation


@functools.cache
def spec() -> dict:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Sales backbone",
            "version": "1.0.0",
            "description": "Point-of-sale systems post sales; owners read reports.",
        },
        "paths": {
            "/": {
                "get": {
                    "summary": "Owners' dashboard (HTML)",
                    "responses": {
                        "200": {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}}
                    },
                }
            },
            "/items/": {
                "get": {
                    "summary": "All items, by id",
                    "parameters": [_FORMAT],
                    "responses": {"200": _table(_rows("Item"), "Items"), "400": _error("Bad format")},
                }
            },
            "/stores/": {
                "get": {
                    "summary": "All stores, by id",
                    "parameters": [_FORMAT],
                    "responses": {"200": _table(_rows("Store"), "Stores"), "400": _error("Bad format")},
                }
            },
            "/items/top/": {
                "get": {
                    "summary": "Items by units sold, most first (ties by id): all time, or from/to; "
                    "the chain's, or one store's (store_id)",
                    "parameters": [
                        _CNT,
                        *_PERIOD_PARAMS,
                        {
                            "name": "store_id",
                            "in": "query",
                            "description": "Only this store's sales",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 2147483647},
                        },
                        _FORMAT,
                    ],
                    "responses": {
                        "200": _table(_rows("TopItem"), "Top items"),
                        "400": _error("Bad cnt, from, to, store_id or format"),
                        "404": _error("No such store"),
                    },
                }
            },
            "/stores/top/": {
                "get": {
                    "summary": "Stores by income in a calendar month, or from/to (REPORT_TIMEZONE), most first "
                    "(ties by id)",
                    "parameters": [_CNT, *_MONTH_PARAMS, *_PERIOD_PARAMS, _FORMAT],
                    "responses": {
                        "200": _table(_rows("TopStore"), "Top stores"),
                        "400": _error("Bad cnt, mm, year, from, to or format, or both a month and a period"),
                    },
                }
            },
            "/stores/{id}/report/": {
                "get": {
                    "summary": "One store over a period (default: this month so far): totals, top items, days. "
                    "CSV: the days",
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 2147483647},
                        },
                        *_PERIOD_PARAMS,
                        _CNT,
                        _FORMAT,
                    ],
                    "responses": {
                        "200": _table({"$ref": "#/components/schemas/StoreReport"}, "The store's page"),
                        "400": _error("Bad from, to, cnt or format"),
                        "404": _error("No such store"),
                    },
                }
            },
            "/reports/summary/": {
                "get": {
                    "summary": "A month's income, units and sales beside the previous month's",
                    "parameters": [*_MONTH_PARAMS, _FORMAT],
                    "responses": {
                        "200": _table({"$ref": "#/components/schemas/MonthSummary"}, "Totals"),
                        "400": _error("Bad mm, year or format"),
                    },
                }
            },
            "/reports/daily/": {
                "get": {
                    "summary": "Income, units and sales of each day of a month that had sales, across the chain",
                    "parameters": [*_MONTH_PARAMS, _FORMAT],
                    "responses": {
                        "200": _table(_rows("Day"), "Days, in order"),
                        "400": _error("Bad mm, year or format"),
                    },
                }
            },
            "/reports/trend/": {
                "get": {
                    "summary": "Income, units and sales per month for the last `months` months up to this one, "
                    "oldest first, beside the same month a year before; the chain's or one store's",
                    "parameters": [
                        {
                            "name": "months",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 120, "default": 12},
                        },
                        {
                            "name": "store_id",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 2147483647},
                        },
                        _FORMAT,
                    ],
                    "responses": {
                        "200": _table(_rows("TrendMonth"), "Months, oldest first"),
                        "400": _error("Bad months, store_id or format"),
                        "404": _error("No such store"),
                    },
                }
            },
            "/reports/totals/": {
                "get": {
                    "summary": "The chain's income and units (net of returns), sales, returns and refunds "
                    "over a period (default: this month so far)",
                    "parameters": [*_PERIOD_PARAMS, _FORMAT],
                    "responses": {
                        "200": _table({"$ref": "#/components/schemas/PeriodTotals"}, "Totals"),
                        "400": _error("Bad from, to or format"),
                    },
                }
            },
            "/reports/hours/": {
                "get": {
                    "summary": "Income, units and sales by weekday (ISO, 1 = Monday) and hour (REPORT_TIMEZONE) over a "
                    "period (default: this month so far): all 168 cells, the chain's or one store's",
                    "parameters": [
                        *_PERIOD_PARAMS,
                        {
                            "name": "store_id",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 2147483647},
                        },
                        _FORMAT,
                    ],
                    "responses": {
                        "200": _table({"$ref": "#/components/schemas/Hours"}, "The cells"),
                        "400": _error("Bad from, to, store_id or format"),
                        "404": _error("No such store"),
                    },
                }
            },
            "/sales/": {
                "post": {
                    "summary": "Report one sale; answered once it is durable in the queue",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": _KEY_PATTERN},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SaleIn"}}},
                    },
                    "responses": {
                        "202": _json(
                            {"$ref": "#/components/schemas/SaleAnswer"},
                            "Accepted (or the earlier sale with this key, or this till's number)",
                        ),
                        "400": _error("Malformed JSON, wrong types, missing or unknown fields"),
                        "409": _error(
                            "A till's number at or below its highest stored, too old to be answered again: "
                            "stored already"
                        ),
                        "413": _error("Body over 1 MiB"),
                        "422": _error(
                            "Unknown item_id or store_id, or a sale_time the server will not store: more "
                            "than MAX_SALE_AGE_DAYS (default 400) ago, or in a month whose sales are archived"
                        ),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/sales/batch/": {
                "post": {
                    "summary": f"Report up to {MAX_BATCH} sales: all accepted, or none",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {
                                            "type": "array",
                                            "minItems": 1,
                                            "maxItems": MAX_BATCH,
                                            "items": {"$ref": "#/components/schemas/SaleIn"},
                                        },
                                        {
                                            "type": "object",
                                            "required": ["sales"],
                                            "additionalProperties": False,
                                            "properties": {
                                                "sales": {
                                                    "type": "array",
                                                    "minItems": 1,
                                                    "maxItems": MAX_BATCH,
                                                    "items": {"$ref": "#/components/schemas/SaleIn"},
                                                }
                                            },
                                        },
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _json(
                            {"type": "array", "items": {"$ref": "#/components/schemas/SaleAnswer"}},
                            "All accepted, in order",
                        ),
                        "400": _error("Malformed JSON or not a list of sales"),
                        "409": _json(
                            {"$ref": "#/components/schemas/BatchErrors"},
                            "None accepted: the sales a till numbered that are stored already, by index",
                        ),
                        "413": _error(f"Body over 1 MiB or more than {MAX_BATCH} sales"),
                        "422": _json(
                            {"$ref": "#/components/schemas/BatchErrors"}, "None accepted: the errors by index"
                        ),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/tills/me": {
                "get": {
                    "summary": "The calling till (its pos key) and the highest number of its sales the server holds: "
                    "a till with a new spool numbers its sales above it",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["till_id", "store_id", "last_seq"],
                                "additionalProperties": False,
                                "properties": {
                                    "till_id": {"type": "integer"},
                                    "store_id": {"type": "integer"},
                                    "last_seq": {"type": "integer", "minimum": 0},
                                },
                            },
                            "The till",
                        ),
                        "403": _error("Not a pos key (tills exist with AUTH_REQUIRED=true)"),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/sales/{id}/returns/": {
                "post": {
                    "summary": "Return (part of) a sale, in its store or another, at the sale's price; answered once "
                    "durable in the queue. A sale not written yet: 409 with Retry-After",
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer", "format": "int64", "minimum": 1, "maximum": 2**63 - 1},
                        },
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": _KEY_PATTERN},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReturnIn"}}},
                    },
                    "responses": {
                        "202": _json(
                            {"$ref": "#/components/schemas/ReturnAnswer"},
                            "Accepted (or the earlier return with this key)",
                        ),
                        "400": _error("Malformed JSON, wrong types, missing or unknown fields"),
                        "403": _error("A pos key of another store"),
                        "404": _error("No such sale"),
                        "409": {
                            "description": (
                                "The sale is not written yet (still queued): retry after Retry-After seconds"
                            ),
                            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                            "content": {"application/json": {"schema": _ERROR}},
                        },
                        "413": _error("Body over 1 MiB"),
                        "422": _error(
                            "More than is left of the sale (`remaining` says how much is), a return before "
                            "the sale or more than MAX_SALE_AGE_DAYS ago, an unknown store, or a sale that "
                            "went to dead_letter"
                        ),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/returns/batch/": {
                "post": {
                    "summary": f"Report up to {MAX_BATCH} returns, each naming its sale: all accepted, or none",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {
                                            "type": "array",
                                            "minItems": 1,
                                            "maxItems": MAX_BATCH,
                                            "items": {"$ref": "#/components/schemas/ReturnOfSale"},
                                        },
                                        {
                                            "type": "object",
                                            "required": ["returns"],
                                            "additionalProperties": False,
                                            "properties": {
                                                "returns": {
                                                    "type": "array",
                                                    "minItems": 1,
                                                    "maxItems": MAX_BATCH,
                                                    "items": {"$ref": "#/components/schemas/ReturnOfSale"},
                                                }
                                            },
                                        },
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _json(
                            {"type": "array", "items": {"$ref": "#/components/schemas/ReturnAnswer"}},
                            "All accepted, in order",
                        ),
                        "400": _error(
                            "Malformed JSON, not a list of returns, or invalid returns (then `errors` by index)"
                        ),
                        "403": _json({"$ref": "#/components/schemas/BatchErrors"}, "A pos key of another store"),
                        "404": _json({"$ref": "#/components/schemas/BatchErrors"}, "No such sale"),
                        "409": {
                            "description": "Some sale is not written yet: retry after Retry-After seconds",
                            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchErrors"}}},
                        },
                        "413": _error(f"Body over 1 MiB or more than {MAX_BATCH} returns"),
                        "422": _json(
                            {"$ref": "#/components/schemas/BatchErrors"}, "None accepted: the errors by index"
                        ),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/clear/": {
                "get": _admin("Empty every table (admin)", False),
                "post": _admin_post("Empty every table (admin)", False),
            },
            "/create/": {
                "get": _admin("Replace all data with demo data (admin)", True),
                "post": _admin_post("Replace all data with demo data (admin)", True),
            },
            "/admin/keys/": {
                "get": {
                    "summary": "List API keys: prefix, kind, store, label, created, revoked (never secrets)",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": _json(_rows("ApiKey"), "Keys, oldest first"),
                        "401": _error("No bearer token"),
                        "403": _error("Not an admin"),
                    },
                },
                "post": {
                    "summary": "Issue a key; its secret is in this answer and never again",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/KeyRequest"}}},
                    },
                    "responses": {
                        "201": _json({"$ref": "#/components/schemas/IssuedKey"}, "The new key"),
                        "400": _error("Bad kind, store or label"),
                        "401": _error("No bearer token"),
                        "403": _error("Not an admin"),
                        "422": _error("No such store, or no such till of that store"),
                    },
                },
            },
            "/admin/keys/{prefix}": {
                "delete": {
                    "summary": "Revoke a key (every API process stops accepting it within 5 s)",
                    "security": [{"bearer": []}],
                    "parameters": [{"name": "prefix", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/ApiKey"}, "The revoked key"),
                        "401": _error("No bearer token"),
                        "403": _error("Not an admin"),
                        "404": _error("No such key"),
                    },
                }
            },
            **_catalogue_paths(),
            "/tills/": _tills_path(),
            "/health": {
                "get": {
                    "summary": "Whether PostgreSQL and Redis answer",
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Health"}, "Both answer"),
                        "503": _json({"$ref": "#/components/schemas/Health"}, "One of them does not"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This description",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3 document")},
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key, or ADMIN_TOKEN. With AUTH_REQUIRED=true every route but "
                    "/health needs one: pos keys post sales for their store, owner keys read "
                    "reports, /metrics and this document, admin keys do everything.",
                },
                "basic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "Same keys as the password (any user name); how the dashboard logs in.",
                },
            },
            "schemas": {
                **_generated_schemas(),
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Item": {
                    "type": "object",
                    "required": ["id", "name", "price"],
                    "properties": {"id": {"type": "integer"}, "name": {"type": "string"}, "price": {"type": "integer"}},
                },
                "Store": {
                    "type": "object",
                    "required": ["id", "address"],
                    "properties": {"id": {"type": "integer"}, "address": {"type": "string"}},
                },
                "TopItem": {
                    "type": "object",
                    "required": ["id", "name", "sales_amount"],
                    "properties": {
                        "id": {"type": "integer"},
                        "name": {"type": "string"},
                        "sales_amount": {"type": "integer"},
                    },
                },
                "TopStore": {
                    "type": "object",
                    "required": ["id", "address", "income"],
                    "properties": {
                        "id": {"type": "integer"},
                        "address": {"type": "string"},
                        "income": {"type": "integer"},
                    },
                },
                "PeriodTotals": {
                    "type": "object",
                    "required": ["from", "to", "income", "units", "sales", "returns", "refunds", "discounts"],
                    "properties": {
                        "from": {"type": "string", "format": "date"},
                        "to": {"type": "string", "format": "date"},
                        **_PERIOD_MEASURES,
                    },
                },
                "Hours": {
                    "type": "object",
                    "required": ["from", "to", "store_id", "cells"],
                    "properties": {
                        "from": {"type": "string", "format": "date"},
                        "to": {"type": "string", "format": "date"},
                        "store_id": {"type": "integer", "nullable": True},
                        "cells": {
                            "type": "array",
                            "minItems": 168,
                            "maxItems": 168,
                            "items": {
                                "type": "object",
                                "required": ["weekday", "hour", "income", "units", "sales"],
                                "properties": {
                                    "weekday": {"type": "integer", "minimum": 1, "maximum": 7},
                                    "hour": {"type": "integer", "minimum": 0, "maximum": 23},
                                    "income": {"type": "integer"},
                                    "units": {"type": "integer"},
                                    "sales": {"type": "integer"},
                                },
                            },
                        },
                    },
                },
                "BatchErrors": {
                    "type": "object",
                    "required": ["error", "errors"],
                    "properties": {
                        "error": {"type": "string"},
                        "errors": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["index", "error"],
                                "properties": {"index": {"type": "integer"}, "error": {"type": "string"}},
                            },
                        },
                    },
                },
                "MonthSummary": {
                    "type": "object",
                    "required": [
                        "month",
                        "income",
                        "units",
                        "sales",
                        "previous_month",
                        "previous_income",
                        "previous_units",
                        "previous_sales",
                        "income_change_pct",
                        "units_change_pct",
                    ],
                    "properties": {
                        "month": {"type": "string", "example": "2026-11"},
                        "income": {"type": "integer"},
                        "units": {"type": "integer"},
                        "sales": {"type": "integer"},
                        "previous_month": {"type": "string"},
                        "previous_income": {"type": "integer"},
                        "previous_units": {"type": "integer"},
                        "previous_sales": {"type": "integer"},
                        "income_change_pct": {"type": "number", "nullable": True},
                        "units_change_pct": {"type": "number", "nullable": True},
                    },
                },
                "TrendMonth": {
                    "type": "object",
                    "required": ["month", "income", "units", "sales", "income_year_before", "income_change_pct"],
                    "properties": {
                        "month": {"type": "string", "example": "2026-11"},
                        "income": {"type": "integer"},
                        "units": {"type": "integer"},
                        "sales": {"type": "integer"},
                        "income_year_before": {"type": "integer"},
                        "income_change_pct": {
                            "type": "number",
                            "nullable": True,
                            "description": "null when the month a year before had no income",
                        },
                    },
                },
                "StoreReport": {
                    "type": "object",
                    "required": [
                        "store",
                        "from",
                        "to",
                        "income",
                        "units",
                        "sales",
                        "returns",
                        "refunds",
                        "discounts",
                        "top_items",
                        "days",
                    ],
                    "properties": {
                        "store": {"$ref": "#/components/schemas/Store"},
                        "from": {"type": "string", "format": "date"},
                        "to": {"type": "string", "format": "date"},
                        **_PERIOD_MEASURES,
                        "top_items": _rows("TopItem"),
                        "days": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["day", "income", "units", "sales", "returns", "refunds", "discounts"],
                                "properties": {"day": {"type": "string", "format": "date"}, **_PERIOD_MEASURES},
                            },
                        },
                    },
                },
                "Day": {
                    "type": "object",
                    "required": ["day", "income", "units", "sales"],
                    "properties": {
                        "day": {"type": "string", "format": "date"},
                        "income": {"type": "integer"},
                        "units": {"type": "integer"},
                        "sales": {"type": "integer"},
                    },
                },
                "KeyRequest": {
                    "type": "object",
                    "required": ["kind"],
                    "additionalProperties": False,
                    "properties": {
                        "kind": {"type": "string", "enum": ["pos", "owner", "admin"]},
                        "store_id": {"type": "integer", "description": "Required for pos keys, absent otherwise"},
                        "label": {"type": "string", "maxLength": 200},
                        "till_id": {
                            "type": "integer",
                            "description": "A pos key for this till (replacing its key: it keeps its sales' numbers); "
                            "absent: a new till",
                        },
                    },
                },
                "IssuedKey": {
                    "type": "object",
                    "required": ["key", "prefix", "kind", "store_id", "label", "till_id"],
                    "properties": {
                        "key": {"type": "string", "description": "The secret: shown once"},
                        "prefix": {"type": "string"},
                        "kind": {"type": "string"},
                        "store_id": {"type": "integer", "nullable": True},
                        "label": {"type": "string"},
                        "till_id": {"type": "integer", "nullable": True, "description": "A pos key's till"},
                    },
                },
                "ApiKey": {
                    "type": "object",
                    "required": ["prefix", "kind", "store_id", "label", "created_at", "revoked_at"],
                    "properties": {
                        "prefix": {"type": "string"},
                        "kind": {"type": "string"},
                        "store_id": {"type": "integer", "nullable": True},
                        "label": {"type": "string"},
                        "created_at": {"type": "string", "format": "date-time"},
                        "revoked_at": {"type": "string", "format": "date-time", "nullable": True},
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["status", "postgres", "redis"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ok", "unavailable"]},
                        "postgres": {"type": "string"},
                        "redis": {"type": "string"},
                        "queue_depth": {"type": "integer"},
                        "error": {"type": "string"},
                    },
                },
            },
        },
    }
