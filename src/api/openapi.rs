//! The API's OpenAPI 3.1 document, generated from the code: each route's
//! `#[utoipa::path]` gives its path, parameters, body and answers, and the
//! router is built from those same attributes (`routes!` in `api/mod.rs`),
//! so a route is served exactly when it is documented. [`complete`] then
//! adds what the layers around every route add: the API key and scopes
//! `auth::needed` asks for, with 401, 403 and 429; `X-Request-Id`; 503;
//! and `application/problem+json` for every error answer.

use std::sync::OnceLock;

use axum::http::{Method, header};
use axum::response::IntoResponse;
use serde_json::{Map, Value, json};
use utoipa::OpenApi;
use utoipa::openapi::schema::{ObjectBuilder, Type};

use super::auth::{self, Scope};
use super::live::Snapshot;
use super::problem::Problem;
use crate::domain::options::RawOptions;
use crate::domain::validation::{RawEmail, RawSms};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "A self-hosted notification gateway for SMS and email. A notification \
            is answered 202 once it is durably stored, then delivered in the background \
            through interchangeable providers with retries and failover; its status and \
            every attempt are readable until it is purged.\n\n\
            Beyond loopback every route but `/healthz`, `/readyz`, `/openapi.json` and the \
            dashboard's page and files needs an API key (`herald keys create`) with the \
            scope the route names; on loopback keys are off unless `auth.required` is set. \
            Errors are `application/problem+json` (RFC 9457). An instance started with \
            `--role worker` serves only `/healthz`, `/readyz` and `/metrics`."
    ),
    // Beside the routes' own: the request bodies' parts (api/openapi.rs
    // assembles them) and what each event of `GET /v1/events` carries,
    // which no body refers to.
    components(schemas(RawSms, RawEmail, RawOptions, Problem, Snapshot)),
    tags(
        (name = "notifications", description = "Sending, reading, listing, canceling and \
            replaying notifications"),
        (name = "compatibility", description = "The reference provider service's paths, so \
            its clients can point at Herald unchanged"),
        (name = "operations", description = "Health, readiness, metrics, providers (and \
            changing them), counts, the live event stream and this document"),
        (name = "webhooks", description = "The status webhooks' deliveries"),
        (name = "dashboard", description = "The operators' page and its files, served \
            without a key: they hold no data"),
    )
)]
struct Base;

/// The document's root, which the routes' paths are merged into.
pub(super) fn base() -> utoipa::openapi::OpenApi {
    Base::openapi()
}

/// The document, as `GET /openapi.json` serves it and `herald openapi`
/// prints it (docs/openapi.json is a copy).
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut doc = serde_json::to_value(super::documented_routes())
            .expect("an OpenAPI document is plain data");
        complete(&mut doc);
        let mut text = serde_json::to_string_pretty(&doc).expect("a JSON value always encodes");
        text.push('\n');
        text
    })
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)),
)]
pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document())
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Response headers sent with every answer where they are documented
/// (utoipa's headers cannot say `required`).
const ALWAYS_SENT: [&str; 1] = ["Location"];

/// Response headers with one value wherever they are sent: a route names
/// them, and they are described (value and all) once, in the components.
const FIXED: [&str; 5] = [
    "Content-Security-Policy",
    "X-Content-Type-Options",
    "Referrer-Policy",
    "Cache-Control",
    "X-Accel-Buffering",
];

/// An object holding a count (an integer, at least 0) under each of
/// `names`, every one always present.
pub(super) fn counts<'a>(names: impl IntoIterator<Item = &'a str>) -> ObjectBuilder {
    names
        .into_iter()
        .fold(ObjectBuilder::new().schema_type(Type::Object), |o, name| {
            o.property(
                name,
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0)),
            )
            .required(name)
        })
}

fn component(kind: &str, name: &str) -> Value {
    json!({ "$ref": format!("#/components/{kind}/{name}") })
}

/// Adds to every operation what the layers around the routes add, and the
/// components they refer to.
fn complete(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        for method in METHODS {
            let Some(operation) = item.get_mut(method) else {
                continue;
            };
            let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .expect("OpenAPI's methods are HTTP methods");
            complete_operation(operation, auth::needed(&method, path));
        }
    }
    let components = &mut doc["components"];
    components["securitySchemes"] = security_schemes();
    components["headers"] = headers();
    components["parameters"] = parameters();
    components["responses"] = responses();
    if let Some(schemas) = components["schemas"].as_object_mut() {
        schemas.extend(request_schemas());
        schemas.extend(event_schemas());
    }
}

fn complete_operation(operation: &mut Value, scopes: &[Scope]) {
    let secured = !scopes.is_empty();
    let keyed = operation["parameters"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["name"] == "Idempotency-Key"));
    // What `submit::read_body` and `parse_object` answer, for every route
    // that reads a JSON body (415 without one), and what a route that takes
    // an Idempotency-Key answers about it.
    if operation["requestBody"].is_object() {
        operation["requestBody"]["required"] = json!(true);
        let bad = if keyed {
            "Malformed JSON, a body that could not be read, or an invalid Idempotency-Key"
        } else {
            "Malformed JSON, or a body that could not be read"
        };
        for (status, description) in [
            ("400", bad),
            (
                "413",
                "The body is over its limit: `body_limit_bytes`; for a batch, \
                `accept.batch_body_limit_bytes`",
            ),
            (
                "415",
                "The body is not `application/json` (nor `application/*+json`)",
            ),
        ] {
            operation["responses"][status] = json!({"description": description});
        }
    }
    if keyed {
        operation["responses"]["409"] =
            json!({"description": "The Idempotency-Key came with a different request before"});
    }
    match operation["parameters"].as_array_mut() {
        Some(parameters) => parameters.push(component("parameters", "X-Request-Id")),
        None => operation["parameters"] = json!([component("parameters", "X-Request-Id")]),
    }

    let responses = &mut operation["responses"];
    if let Some(responses) = responses.as_object_mut() {
        for (status, response) in responses.iter_mut() {
            complete_response(response, status, secured, keyed);
        }
    }
    if secured {
        responses["401"] = component("responses", "Unauthorized");
        responses["403"] = component("responses", "Forbidden");
        responses["429"] = component("responses", "TooManyRequests");
    }
    if responses["503"].is_null() {
        responses["503"] = component("responses", "Unavailable");
    }

    if secured {
        let names: Vec<_> = scopes.iter().map(|s| format!("`{}`", s.as_str())).collect();
        let note = format!("Needs an API key with the {} scope.", names.join(" or "));
        operation["description"] = match operation["description"].as_str() {
            Some(d) => json!(format!("{d}\n\n{note}")),
            None => json!(note),
        };
        // Any one requirement lets a request in: either header, any scope.
        let alternatives: Vec<Value> = ["bearer", "api_key"]
            .iter()
            .flat_map(|scheme| {
                scopes
                    .iter()
                    .map(move |s| json!({ (*scheme): [s.as_str()] }))
            })
            .collect();
        operation["security"] = json!(alternatives);
    }
}

fn complete_response(response: &mut Value, status: &str, secured: bool, keyed: bool) {
    let headers = &mut response["headers"];
    for name in ALWAYS_SENT {
        if headers[name].is_object() {
            headers[name]["required"] = json!(true);
        }
    }
    for name in FIXED {
        if headers[name].is_object() {
            headers[name] = component("headers", name);
        }
    }
    headers["X-Request-Id"] = component("headers", "X-Request-Id");
    if secured {
        for name in ["RateLimit-Limit", "RateLimit-Remaining"] {
            headers[name] = component("headers", name);
        }
    }
    if keyed && status.starts_with('2') {
        headers["Idempotent-Replayed"] = component("headers", "Idempotent-Replayed");
    }
    if !status.starts_with(['2', '3']) && response["content"].is_null() {
        response["content"] =
            json!({"application/problem+json": {"schema": component("schemas", "Problem")}});
    }
}

fn security_schemes() -> Value {
    let keys = "An API key made with `herald keys create`; the scopes of a requirement are \
        the key's scopes (send, read, admin) that let the request in.";
    json!({
        "bearer": {"type": "http", "scheme": "bearer", "description": keys},
        "api_key": {"type": "apiKey", "in": "header", "name": "X-Api-Key", "description": keys},
    })
}

fn headers() -> Value {
    let count = |description: &str, minimum: u32| json!({"description": description, "schema": {"type": "integer", "minimum": minimum}});
    json!({
        "X-Request-Id": {
            "description": "The request's id in Herald's logs: the caller's X-Request-Id when \
                it is 1 to 128 of A-Z a-z 0-9 - _ . :, a fresh one otherwise",
            "required": true,
            "schema": {"type": "string", "minLength": 1, "maxLength": 128},
        },
        "Retry-After": {
            "description": "Seconds to wait before trying again",
            "required": true,
            "schema": {"type": "integer", "minimum": 1},
        },
        "RateLimit-Limit": count("The key's burst: requests it may make at once", 0),
        "RateLimit-Remaining": count("Requests the key may make now", 0),
        "RateLimit-Reset": count("Seconds until the key may make a request again", 1),
        "WWW-Authenticate": {
            "required": true,
            "schema": {"type": "string", "enum": ["Bearer"]},
        },
        "Content-Security-Policy": fixed(
            "Only the dashboard's own files, and calls back to this origin",
            super::dashboard::POLICY,
        ),
        "X-Content-Type-Options": fixed("Never sniffed as another type", "nosniff"),
        "Referrer-Policy": fixed("No Referer from the dashboard", "no-referrer"),
        "Cache-Control": fixed(
            "Revalidated each time: a new binary's dashboard is never mixed with an old \
             script, and no proxy keeps the event stream",
            "no-cache",
        ),
        "X-Accel-Buffering": fixed(
            "Tells nginx not to buffer the stream, which would hold its events back",
            "no",
        ),
        "Idempotent-Replayed": {
            "description": "This is the stored answer to an earlier request with the same \
                Idempotency-Key and body; nothing new was stored",
            "schema": {"type": "string", "enum": ["true"]},
        },
    })
}

/// A header always sent with one value.
fn fixed(description: &str, value: &str) -> Value {
    json!({
        "description": description,
        "required": true,
        "schema": {"type": "string", "enum": [value]},
    })
}

fn parameters() -> Value {
    json!({
        "X-Request-Id": {
            "name": "X-Request-Id",
            "in": "header",
            "description": "An id for this request in Herald's logs, echoed in the answer: \
                1 to 128 of A-Z a-z 0-9 - _ . : (anything else is replaced by a fresh one)",
            "schema": {"type": "string"},
        },
    })
}

fn problem_response(description: &str, headers: &[&str]) -> Value {
    let mut named: Map<String, Value> = headers
        .iter()
        .map(|h| ((*h).to_owned(), component("headers", h)))
        .collect();
    named.insert("X-Request-Id".into(), component("headers", "X-Request-Id"));
    json!({
        "description": description,
        "headers": named,
        "content": {"application/problem+json": {"schema": component("schemas", "Problem")}},
    })
}

fn responses() -> Value {
    json!({
        "Unauthorized": problem_response(
            "No key, or not a valid unrevoked one (when keys are required)",
            &["WWW-Authenticate"],
        ),
        "Forbidden": problem_response("The key lacks the scope this route needs", &[]),
        "TooManyRequests": problem_response(
            "The key is over its rate limit, or the instance over `auth.global_rate_per_sec`",
            &["Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"],
        ),
        "Unavailable": problem_response(
            "The store is unavailable (a write whose commit was in doubt may have been stored: \
             retry with the same `Idempotency-Key`), the instance is shutting down, \
             the request took longer than `http.request_timeout_ms`, or the instance has \
             `http.max_connections` open (over TLS, such a connection is closed unanswered)",
            &["Retry-After"],
        ),
    })
}

/// One event of `GET /v1/events` as a reader of the stream parses it: its
/// `event` field and its `data`, which is JSON (JSON Schema's
/// `contentMediaType` and `contentSchema`). This is how OpenAPI 3.2 words a
/// `text/event-stream` item, and how schemathesis reads the stream's events
/// under 3.1, checking each against it.
fn event_schemas() -> Map<String, Value> {
    let mut schemas = Map::new();
    schemas.insert(
        "SnapshotEvent".into(),
        json!({
            "description": "One server-sent event: `event: snapshot` and a `data` line of JSON",
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"type": "string", "const": "snapshot"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": component("schemas", "EventSnapshot"),
                },
            },
        }),
    );
    schemas
}

/// The bodies that create notifications: a message's fields and the
/// delivery options, which Herald reads apart to name every bad field at
/// once.
fn request_schemas() -> Map<String, Value> {
    // `expires_at` and `ttl_secs` are two ways to give one deadline;
    // `null` is as good as absent.
    let one_deadline = json!({
        "not": {
            "required": ["expires_at", "ttl_secs"],
            "properties": {
                "expires_at": {"not": {"type": "null"}},
                "ttl_secs": {"not": {"type": "null"}},
            },
        },
    });
    let fields = |name: &str| {
        json!({"allOf": [
            component("schemas", name),
            component("schemas", "DeliveryOptions"),
            one_deadline,
        ]})
    };
    let item = |channel: &str, name: &str| {
        json!({"allOf": [
            {
                "type": "object",
                "required": ["channel"],
                "properties": {"channel": {"type": "string", "const": channel}},
            },
            component("schemas", name),
            component("schemas", "DeliveryOptions"),
            one_deadline,
        ]})
    };
    let mut schemas = Map::new();
    schemas.insert("SmsRequest".into(), fields("SmsFields"));
    schemas.insert("EmailRequest".into(), fields("EmailFields"));
    schemas.insert(
        "BatchItem".into(),
        json!({
            "description": "An SMS or an email, named by `channel`, with its options",
            "oneOf": [item("sms", "SmsFields"), item("email", "EmailFields")],
        }),
    );
    schemas.insert(
        "BatchRequest".into(),
        json!({
            "type": "object",
            "required": ["notifications"],
            "properties": {"notifications": {
                "description": "1 to `accept.batch_max_items` (1,000) notifications; an \
                    invalid one is refused in its result and the others are stored",
                "type": "array",
                "minItems": 1,
                "items": component("schemas", "BatchItem"),
            }},
        }),
    );
    schemas
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        serde_json::from_str(document()).unwrap()
    }

    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in METHODS {
                if item[method].is_object() {
                    out.push((path.clone(), method.to_owned(), item[method].clone()));
                }
            }
        }
        out
    }

    #[test]
    fn the_licence_is_the_packages() {
        // utoipa fills `info.license` from Cargo.toml's `license`; an empty
        // name there (no licence set) was what the document said before.
        let doc = doc();
        let license = &doc["info"]["license"];
        assert_eq!(license["name"], "MIT OR Apache-2.0", "{license}");
        assert_eq!(license["identifier"], "MIT OR Apache-2.0", "{license}");
    }

    #[test]
    fn every_operation_names_the_key_and_scopes_it_needs() {
        let doc = doc();
        for (path, method, op) in operations(&doc) {
            let scopes = auth::needed(&method.to_uppercase().parse().unwrap(), &path);
            let secured = !scopes.is_empty();
            assert_eq!(op["security"].is_array(), secured, "{method} {path}");
            for status in ["401", "403", "429"] {
                assert_eq!(
                    op["responses"][status].is_object(),
                    secured,
                    "{method} {path}"
                );
            }
            if secured {
                let named: Vec<&str> = op["security"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|r| r.as_object().unwrap().values())
                    .flat_map(|s| s.as_array().unwrap())
                    .map(|s| s.as_str().unwrap())
                    .collect();
                for scope in scopes {
                    assert!(named.contains(&scope.as_str()), "{method} {path}");
                }
            }
        }
        let send = &doc["paths"]["/v1/sms"]["post"]["security"];
        assert_eq!(send[0], json!({"bearer": ["send"]}));
        assert_eq!(send[1], json!({"api_key": ["send"]}));
        assert!(doc["paths"]["/openapi.json"]["get"]["security"].is_null());
        assert_eq!(
            doc["paths"]["/metrics"]["get"]["security"][0],
            json!({"bearer": ["admin"]})
        );
    }

    #[test]
    fn every_error_answer_is_a_problem_with_a_request_id() {
        let doc = doc();
        let shared = &doc["components"]["responses"];
        for (path, method, op) in operations(&doc) {
            assert!(op["operationId"].is_string(), "{method} {path}");
            for (status, response) in op["responses"].as_object().unwrap() {
                let response = match response["$ref"].as_str() {
                    Some(r) => &shared[r.rsplit('/').next().unwrap()],
                    None => response,
                };
                assert!(
                    response["headers"]["X-Request-Id"].is_object(),
                    "{method} {path} {status}"
                );
                // Success and redirection are not errors.
                if !status.starts_with(['2', '3']) {
                    assert_eq!(
                        response["content"]["application/problem+json"]["schema"]["$ref"],
                        "#/components/schemas/Problem",
                        "{method} {path} {status}"
                    );
                }
            }
            assert!(op["responses"]["503"].is_object(), "{method} {path}");
        }
        let problem_types = &doc["components"]["schemas"]["ProblemType"]["enum"];
        assert!(problem_types.as_array().unwrap().len() >= 21);
    }

    /// Every `$ref` in `value`, wherever it is nested.
    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_names_a_component() {
        // A type named only by a parameter's `value_type` is not collected
        // into the components by utoipa: its reference would dangle.
        let doc = doc();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for r in found {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{r}: not local"));
            assert!(doc.pointer(pointer).is_some(), "{r} names nothing");
        }
    }

    #[test]
    fn bodies_are_required_and_keyed_answers_say_when_replayed() {
        let doc = doc();
        for path in [
            "/v1/sms",
            "/v1/email",
            "/api/sms",
            "/api/email",
            "/v1/batch",
        ] {
            let op = &doc["paths"][path]["post"];
            assert_eq!(op["requestBody"]["required"], true, "{path}");
            assert!(
                op["responses"]["202"]["headers"]["Idempotent-Replayed"].is_object(),
                "{path}"
            );
        }
        let location = &doc["paths"]["/v1/sms"]["post"]["responses"]["202"]["headers"]["Location"];
        assert_eq!(location["required"], true);
        assert_eq!(
            doc["paths"]["/api/sms"]["post"]["operationId"],
            "send_sms_compat"
        );
    }
}
