"""The REST API described in OpenAPI 3.1, served at ``/api/v1/openapi.json``.

One place for the contract: ``test_openapi.py`` checks it against the URL patterns and the
views' answers, and the deploy tests run schemathesis with it against the packaged app under
gunicorn (every answer must match it, none may be a server error).
"""

from __future__ import annotations

from django.conf import settings

LABELS = ["NORMAL", "PNEUMONIA"]


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _json(description: str, schema: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


UNAUTHORIZED = _error("No valid API token: send 'Authorization: Bearer <token>'.")
NOT_FOUND = _error("No such prediction among those you may see (others' look the same).")


def _method_not_allowed(allowed: str) -> dict:
    return {
        "description": f"Another method than {allowed}.",
        "headers": {"Allow": {"schema": {"type": "string"}, "description": allowed}},
        "content": {"application/json": {"schema": _ref("Error")}},
    }


def _prediction_properties() -> dict:
    return {
        "id": {"type": "integer"},
        "created_at": {"type": "string", "format": "date-time"},
        "user": {"type": "string", "description": "who asked"},
        "source": {"enum": ["web", "api"]},
        "case_reference": {"type": "string", "maxLength": 40},
        "label": {"enum": LABELS},
        "probability": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "description": "of PNEUMONIA, calibrated",
        },
        "threshold": {"type": "number", "description": "PNEUMONIA at or above it"},
        "model": _ref("ModelIdentity"),
        "image": {
            "type": "object",
            "required": ["sha256", "width", "height"],
            "properties": {
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "width": {"type": "integer", "minimum": 1},
                "height": {"type": "integer", "minimum": 1},
            },
        },
        "feedback": {"oneOf": [{"type": "null"}, _ref("Feedback")]},
        "feedback_url": {"type": "string", "format": "uri"},
    }


def spec(server_url: str = "/") -> dict:
    """The OpenAPI document; ``server_url`` is the app's base URL as the client reached it."""
    page_size = settings.HISTORY_PAGE_SIZE
    limit_mb = settings.MAX_UPLOAD_BYTES // 2**20
    prediction = _prediction_properties()
    result = {
        **prediction,
        "model": {
            "type": "object",
            "required": ["name", "version", "sha256"],
            "properties": {
                "name": {"type": ["string", "null"]},
                "version": {"type": "string"},
                "sha256": {"type": "string"},
            },
        },
        "heatmap_url": {"type": "string", "format": "uri"},
        "heatmap_expires_in_seconds": {"type": "integer", "minimum": 1},
        "image_held_for_consent_seconds": {"type": "integer", "minimum": 1},
    }
    id_parameter = {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
    # An empty filter is no filter (what an HTML form sends for a field left blank).
    blank = {"const": ""}
    date = {"oneOf": [{"type": "string", "format": "date"}, blank]}
    label = {"oneOf": [{"enum": LABELS}, blank]}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Chest X-ray pneumonia classifier",
            "version": "1",
            "description": "Predictions on chest X-rays (NORMAL or PNEUMONIA), their history "
            "and the clinician's feedback. A decision aid: every answer is for a clinician to "
            "judge. Create an API token on the 'API tokens' page after signing in.",
        },
        "servers": [{"url": server_url}],
        "security": [{"bearer": []}],
        "paths": {
            "/health": {
                "get": {
                    "operationId": "health",
                    "summary": "Whether the model is loaded, which one, and the release's commit",
                    "security": [],
                    "responses": {
                        "200": _json("The model is loaded.", "Health"),
                        "503": _json("The model is not loaded.", "HealthError"),
                    },
                }
            },
            "/api/v1/predictions": {
                "get": {
                    "operationId": "listPredictions",
                    "summary": f"Your predictions, newest first, {page_size} a page "
                    "(staff: everyone's)",
                    "parameters": [
                        {"name": "label", "in": "query", "schema": label},
                        {"name": "date_from", "in": "query", "schema": date},
                        {"name": "date_to", "in": "query", "schema": date},
                        {"name": "case", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "user",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "staff only: one clinician's",
                        },
                        {
                            "name": "page",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1},
                            "description": "past the last page: the last page",
                        },
                    ],
                    "responses": {
                        "200": _json("One page of the history.", "PredictionPage"),
                        "400": _error("A filter that is not a label, a date or a page."),
                        "401": UNAUTHORIZED,
                        "405": _method_not_allowed("GET, POST"),
                    },
                },
                "post": {
                    "operationId": "predict",
                    "summary": "Predict on one chest X-ray and record the prediction (never "
                    "the image)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["image"],
                                    "properties": {
                                        "image": {
                                            "type": "string",
                                            "format": "binary",
                                            "description": "JPEG, PNG or DICOM, at most "
                                            f"{limit_mb} MB",
                                        },
                                        "case_reference": {"type": "string", "maxLength": 40},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json("The prediction and its heat map's link.", "PredictionResult"),
                        "400": _error("No file, an unreadable image or a case reference too long."),
                        "401": UNAUTHORIZED,
                        "405": _method_not_allowed("GET, POST"),
                        "408": _error("The body arrived too slowly and was not read."),
                        "411": _error("A chunked body: send a Content-Length."),
                        "413": _error(f"Larger than {limit_mb} MB: not read."),
                        "422": _json(
                            "Not a chest X-ray the model can answer for: refused and recorded.",
                            "Refusal",
                        ),
                        "503": _error("The model is not available right now."),
                    },
                },
            },
            "/api/v1/predictions/{id}": {
                "get": {
                    "operationId": "getPrediction",
                    "summary": "One prediction you may see",
                    "parameters": [id_parameter],
                    "responses": {
                        "200": _json("The prediction.", "Prediction"),
                        "401": UNAUTHORIZED,
                        "404": NOT_FOUND,
                        "405": _method_not_allowed("GET"),
                    },
                }
            },
            "/api/v1/predictions/{id}/feedback": {
                "post": {
                    "operationId": "giveFeedback",
                    "summary": "Your verdict on your prediction; with consent, its image is "
                    "kept for retraining",
                    "parameters": [id_parameter],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["true_label"],
                                    "properties": {
                                        "true_label": {"enum": LABELS},
                                        "consent": {"type": "boolean", "default": False},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": _json("The prediction with its feedback.", "Prediction"),
                        "400": _error(
                            "Not a JSON object, an unknown label or a consent that "
                            "is not true or false."
                        ),
                        "401": UNAUTHORIZED,
                        "403": _error("Someone else's prediction (staff may see it)."),
                        "404": NOT_FOUND,
                        "405": _method_not_allowed("POST"),
                        "409": _error("Feedback was already given."),
                        "410": _error("Consent came after the image's hold ended."),
                        "503": _error("The image could not be stored; nothing was recorded."),
                    },
                }
            },
            "/api/v1/drift": {
                "get": {
                    "operationId": "getDrift",
                    "summary": "Staff: the served model's drift signals against its test "
                    "split (what the monitoring page shows)",
                    "responses": {
                        "200": _json("The signals and their states.", "Drift"),
                        "401": UNAUTHORIZED,
                        "403": _error("Not a staff token."),
                        "405": _method_not_allowed("GET"),
                        "503": _error("The model is not available right now."),
                    },
                }
            },
            "/api/v1/heatmaps/{token}.jpg": {
                "get": {
                    "operationId": "getHeatmap",
                    "summary": "A prediction's heat map, to its owner, while it is held",
                    "parameters": [
                        {
                            "name": "token",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[^/]+$"},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The heat map over the image.",
                            "content": {
                                "image/jpeg": {"schema": {"type": "string", "format": "binary"}}
                            },
                        },
                        "401": UNAUTHORIZED,
                        "404": _error("No such heat map, someone else's, or expired."),
                        "405": _method_not_allowed("GET"),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
                "Refusal": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message", "refusal"],
                            "properties": {
                                "code": {"const": "not_a_chest_xray"},
                                "message": {"type": "string"},
                                "refusal": {
                                    "type": "object",
                                    "required": ["id", "reason"],
                                    "properties": {
                                        "id": {"type": "integer"},
                                        "reason": {"type": "string"},
                                    },
                                },
                            },
                        }
                    },
                },
                "Drift": {
                    "type": "object",
                    "required": [
                        "model_version",
                        "state",
                        "reference_images",
                        "window",
                        "feedback_ready",
                        "feedback_for_retrain",
                        "retrain_ready",
                        "monitoring_url",
                        "signals",
                    ],
                    "properties": {
                        "model_version": {"type": "string"},
                        "state": {"enum": ["ok", "warn", "alert", None]},
                        "reference_images": {"type": ["integer", "null"]},
                        "window": {
                            "type": "object",
                            "required": ["predictions", "refusals", "feedback"],
                            "properties": {
                                k: {"type": "integer", "minimum": 0}
                                for k in ("predictions", "refusals", "feedback")
                            },
                        },
                        "feedback_ready": {"type": "integer", "minimum": 0},
                        "feedback_for_retrain": {"type": "integer", "minimum": 1},
                        "retrain_ready": {"type": "boolean"},
                        "monitoring_url": {"type": "string", "format": "uri"},
                        "signals": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "state", "value", "count", "detail"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "state": {"enum": ["ok", "warn", "alert", None]},
                                    "value": {"type": ["number", "null"]},
                                    "reference": {"type": ["number", "null"]},
                                    "p_value": {"type": ["number", "null"]},
                                    "count": {"type": "integer", "minimum": 0},
                                    "detail": {"type": "string"},
                                },
                            },
                        },
                    },
                },
                "ModelIdentity": {
                    "type": "object",
                    "required": ["version", "sha256"],
                    "properties": {"version": {"type": "string"}, "sha256": {"type": "string"}},
                },
                "Feedback": {
                    "type": "object",
                    "required": ["true_label", "consent", "agrees", "created_at"],
                    "properties": {
                        "true_label": {"enum": LABELS},
                        "consent": {"type": "boolean"},
                        "agrees": {"type": "boolean"},
                        "created_at": {"type": "string", "format": "date-time"},
                    },
                },
                "Prediction": {
                    "type": "object",
                    "required": list(prediction),
                    "properties": prediction,
                },
                "PredictionResult": {
                    "type": "object",
                    "required": list(result),
                    "properties": result,
                },
                "PredictionPage": {
                    "type": "object",
                    "required": ["count", "page", "pages", "next", "previous", "results"],
                    "properties": {
                        "count": {"type": "integer", "minimum": 0},
                        "page": {"type": "integer", "minimum": 1},
                        "pages": {"type": "integer", "minimum": 1},
                        "next": {"type": ["string", "null"], "format": "uri"},
                        "previous": {"type": ["string", "null"], "format": "uri"},
                        "results": {
                            "type": "array",
                            "maxItems": page_size,
                            "items": _ref("Prediction"),
                        },
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["status", "model_loaded", "version", "sha256", "commit"],
                    "properties": {
                        "status": {"const": "ok"},
                        "model_loaded": {"const": True},
                        "version": {"type": "string"},
                        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                        "commit": {"type": ["string", "null"]},
                    },
                },
                "HealthError": {
                    "type": "object",
                    "required": ["status", "model_loaded", "error"],
                    "properties": {
                        "status": {"const": "error"},
                        "model_loaded": {"const": False},
                        "error": {"type": "string"},
                    },
                },
            },
        },
    }
