"""The OpenAPI document of ``likeness serve`` (``GET /openapi.json``), written by hand: the API is small
and its answers are the scanner's own result lines."""

from __future__ import annotations

from typing import Any

_ERR = {"description": "An error: {\"error\": message, \"status\": code}",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _errors(*codes: int) -> dict[str, Any]:
    words = {400: "bad input", 401: "no or unknown token", 403: "role too low, CSRF token missing, or a path "
             "outside the allowed roots", 404: "not found", 413: "too large", 415: "not an image, audio or video "
             "file", 429: "rate limit of this token (Retry-After)", 503: "starting or busy (Retry-After)"}
    return {str(c): {**_ERR, "description": words[c]} for c in codes}


def document(version: str, max_upload_bytes: int) -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    upload = {"multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": f"the output, at most {max_upload_bytes:,} bytes"}}}},
              "application/json": {"schema": {"type": "object", "required": ["path"], "properties": {
                  "path": {"type": "string", "description": "a file inside a root given with --allow-root"}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "likeness serve", "version": version,
                 "description": "Checks generated outputs against an index of protected works. Every call "
                                "but /healthz needs 'Authorization: Bearer TOKEN' (likeness users add)."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"},
                                                           "status": {"type": "integer"}}},
                "Result": {"type": "object", "description": "one line of results.jsonl (README: result lines)",
                           "properties": {"path": {"type": "string"}, "sha256": {"type": ["string", "null"]},
                                          "modality": {"type": "string"},
                                          "verdict": {"enum": ["clear", "review", "flagged", "licensed", "error"]},
                                          "score": {"type": "number"}, "reason": {"type": "string"},
                                          "error": {"type": ["string", "null"]}, "index_id": {"type": "string"},
                                          "matches": {"type": "array", "items": {"type": "object"}}}},
            }},
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": {"security": [], "summary": "Up, and whether the scanner is ready",
                                 "responses": {"200": {"description": "status, ready, uptime_s, ready_after_s"}}}},
            "/v1/check": {"post": {"summary": "Check one file; answers its result line",
                                   "requestBody": {"required": True, "content": upload},
                                   "responses": {"200": {"description": "the result line (verdict 'error' for "
                                                         "media that does not decode)",
                                                         "content": {"application/json": {"schema": {
                                                             "$ref": "#/components/schemas/Result"}}}},
                                                 **_errors(400, 401, 403, 413, 415, 429, 503)}}},
            "/v1/jobs": {"post": {"summary": "Check a batch (several 'file' fields, or {\"paths\": [...]})",
                                  "responses": {"202": {"description": "{id, total, status, events}"},
                                                **_errors(400, 401, 403, 413, 429)}}},
            "/v1/jobs/{id}": {"get": {"summary": "A job's state and results so far",
                                      "responses": {"200": {"description": "{id, state, total, done, counts, "
                                                            "results}"}, **_errors(401, 404)}}},
            "/v1/jobs/{id}/events": {"get": {"summary": "Server-sent events: 'result' per file, then 'done'",
                                             "responses": {"200": {"description": "text/event-stream"},
                                                           **_errors(401, 404)}}},
            "/v1/index": {"get": {"summary": "The index: id, works, features, thresholds",
                                  "responses": {"200": {"description": "index description"}, **_errors(401, 503)}}},
            "/v1/index/reload": {"post": {"summary": "Open the index again if it changed (admin)",
                                          "responses": {"200": {"description": "{reloaded, index_id}"},
                                                        **_errors(401, 403)}}},
            "/v1/history": {"get": {"summary": "This server's checks, newest first",
                                    "responses": {"200": {"description": "{checks: [...]}"}, **_errors(401)}}},
            "/v1/decisions": {"post": {"summary": "Record a decision in the ledger (reviewer): {check or sha256, "
                                                  "decision, why[, works]}",
                                       "responses": {"200": {"description": "{recorded, ledger}"},
                                                     **_errors(400, 401, 403, 404)}}},
            "/v1/users": {"get": {"summary": "Users (admin)", "responses": {"200": {"description": "{users}"},
                                                                           **_errors(401, 403)}},
                          "post": {"summary": "Add a user (admin); answers the token once",
                                   "responses": {"201": {"description": "{name, role, created, token}"},
                                                 **_errors(400, 401, 403)}}},
            "/v1/users/{name}": {"delete": {"summary": "Remove a user and end their sessions (admin)",
                                            "responses": {"200": {"description": "{removed, sessions_ended}"},
                                                          **_errors(400, 401, 403)}}},
        },
    }
