//! The checked-in OpenAPI document (`src/gateway/openapi.json`, served at
//! `/openapi.json`) against the gateway's routes: the document describes
//! exactly the routes in `ROUTES`, every `$ref` resolves, the event routes
//! declare their security and answers, and the router (with unreachable
//! Redis and Kafka, so no services are needed) serves every route and answers
//! with documented statuses, headers and bodies.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use incentives::config::{hash_api_key, ClientSettings, Config, Programs, Settings};
use incentives::gateway::{self, AppState, OPENAPI, ROUTES};
use serde_json::{json, Value};

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn doc() -> Value {
    serde_json::from_str(OPENAPI)
        .unwrap_or_else(|e| panic!("src/gateway/openapi.json is not JSON: {e}"))
}

/// (method, path) of every operation in the document.
fn documented_operations(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("the document has `paths`");
    let mut out = BTreeSet::new();
    for (path, item) in paths {
        let item = item
            .as_object()
            .unwrap_or_else(|| panic!("paths.{path} is not an object"));
        for method in item.keys().filter(|k| HTTP_METHODS.contains(&k.as_str())) {
            out.insert((method.clone(), path.clone()));
        }
    }
    out
}

fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    let op = &doc["paths"][path][method];
    assert!(
        op.is_object(),
        "no operation {} {path} in the document",
        method.to_uppercase()
    );
    op
}

/// Follows `$ref`s (local ones only) to the object they name.
fn resolve<'a>(doc: &'a Value, mut value: &'a Value) -> &'a Value {
    for _ in 0..32 {
        match value.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let pointer = r
                    .strip_prefix('#')
                    .unwrap_or_else(|| panic!("non-local $ref {r}"));
                value = doc
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("$ref {r} does not resolve"));
            }
            None => return value,
        }
    }
    panic!("$ref cycle")
}

fn declared_responses(doc: &Value, method: &str, path: &str) -> BTreeSet<String> {
    operation(doc, method, path)["responses"]
        .as_object()
        .map(|r| r.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn the_document_is_openapi_3() {
    let doc = doc();
    let version = doc["openapi"].as_str().expect("`openapi` is a string");
    assert!(
        version.starts_with("3."),
        "`openapi` is {version:?}, expected 3.x"
    );
    assert!(
        doc["info"]["title"].is_string() && doc["info"]["version"].is_string(),
        "`info` needs a title and a version"
    );
    let scheme = &doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(scheme["type"], "http", "bearerAuth: {scheme}");
    assert_eq!(scheme["scheme"], "bearer", "bearerAuth: {scheme}");
}

#[test]
fn the_document_describes_exactly_the_routes() {
    let documented = documented_operations(&doc());
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        routed.len(),
        ROUTES.len(),
        "ROUTES lists a route twice: {ROUTES:?}"
    );
    let show = |set: BTreeSet<&(String, String)>| {
        set.iter()
            .map(|(m, p)| format!("{} {p}", m.to_uppercase()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let undocumented = show(routed.difference(&documented).collect());
    let unrouted = show(documented.difference(&routed).collect());
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "src/gateway/openapi.json and gateway::ROUTES disagree.\n  in ROUTES, not in the document: [{undocumented}]\n  in the document, not in ROUTES: [{unrouted}]"
    );
}

#[test]
fn event_operations_declare_bearer_auth_and_their_answers() {
    let doc = doc();
    let mut seen = 0;
    for (method, path) in ROUTES {
        let op = operation(&doc, method, path);
        let security = op.get("security").or_else(|| doc.get("security"));
        let responses = declared_responses(&doc, method, path);
        if !path.starts_with("/v1/events/") {
            let open = security.and_then(Value::as_array).is_none_or(|s| {
                s.is_empty()
                    || s.iter()
                        .any(|r| r.as_object().is_some_and(|o| o.is_empty()))
            });
            assert!(
                open,
                "{} {path} needs no authentication, but declares security {security:?}",
                method.to_uppercase()
            );
            assert!(
                responses.contains("200"),
                "{} {path} declares no 200: {responses:?}",
                method.to_uppercase()
            );
            continue;
        }
        seen += 1;
        let bearer = security.and_then(Value::as_array).is_some_and(|s| {
            !s.is_empty()
                && s.iter()
                    .all(|r| r.as_object().is_some_and(|o| o.contains_key("bearerAuth")))
        });
        assert!(
            bearer,
            "{} {path} must declare security [{{bearerAuth: []}}], has {security:?}",
            method.to_uppercase()
        );
        let mut required = vec!["400", "401", "413"];
        if *path == "/v1/events/batch" {
            // The batch answers 200 whatever its events' fates; 403, 409 and
            // 503 are statuses of its items (checked below), never its own.
            required.push("200");
        } else {
            required.extend(["202", "403", "409", "503"]);
        }
        let missing: Vec<_> = required
            .iter()
            .filter(|c| !responses.contains(**c))
            .collect();
        assert!(
            missing.is_empty(),
            "{} {path} does not declare the responses {missing:?} (declares {responses:?})",
            method.to_uppercase()
        );
        for (code, response) in operation(&doc, method, path)["responses"]
            .as_object()
            .unwrap()
        {
            let response = resolve(&doc, response);
            assert!(
                response["description"].is_string(),
                "{} {path} {code} has no description",
                method.to_uppercase()
            );
            if ["409", "503"].contains(&code.as_str()) {
                assert!(
                    response["headers"].get("Retry-After").is_some(),
                    "{} {path} {code} must declare Retry-After",
                    method.to_uppercase()
                );
            }
            if code == "401" {
                assert!(
                    response["headers"].get("WWW-Authenticate").is_some(),
                    "{} {path} 401 must declare WWW-Authenticate",
                    method.to_uppercase()
                );
            }
        }
    }
    assert_eq!(seen, 3, "expected three /v1/events/ routes in ROUTES");
}

#[test]
fn batch_item_results_cover_every_status_of_a_single_event() {
    let doc = doc();
    let results = resolve(
        &doc,
        &doc["paths"]["/v1/events/batch"]["post"]["responses"]["200"]["content"]
            ["application/json"]["schema"],
    );
    let item = resolve(&doc, &results["properties"]["results"]["items"]);
    let variants: Vec<&Value> = match item.get("oneOf").and_then(Value::as_array) {
        Some(v) => v.iter().map(|s| resolve(&doc, s)).collect(),
        None => vec![item],
    };
    let statuses: BTreeSet<u64> = variants
        .iter()
        .filter_map(|v| v["properties"]["status"]["enum"].as_array())
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    let single: BTreeSet<u64> = declared_responses(&doc, "post", "/v1/events/data-logged")
        .iter()
        .filter_map(|c| c.parse().ok())
        .filter(|c| ![401, 413].contains(c)) // whole-request answers, never per item
        .collect();
    assert_eq!(
        statuses, single,
        "batch item statuses must be those a single event can get (less 401 and 413)"
    );
}

#[test]
fn every_ref_resolves() {
    fn collect<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push((at.clone(), r)),
                        // Discriminator mappings name schemas by reference too.
                        ("mapping", Value::Object(m)) if at.ends_with("/discriminator") => out
                            .extend(m.iter().filter_map(|(name, r)| {
                                r.as_str().map(|r| (format!("{at}/mapping/{name}"), r))
                            })),
                        _ => collect(v, format!("{at}/{k}"), out),
                    }
                }
            }
            Value::Array(items) => items
                .iter()
                .enumerate()
                .for_each(|(i, v)| collect(v, format!("{at}/{i}"), out)),
            _ => {}
        }
    }
    let doc = doc();
    let mut refs = Vec::new();
    collect(&doc, String::new(), &mut refs);
    assert!(
        refs.len() > 10,
        "expected the document to use components, found {} $refs",
        refs.len()
    );
    let broken: Vec<String> = refs
        .iter()
        .filter(|(_, r)| {
            !(r.starts_with("#/components/") && doc.pointer(&r[1..]).is_some_and(Value::is_object))
        })
        .map(|(at, r)| format!("{at}: {r}"))
        .collect();
    assert!(
        broken.is_empty(),
        "$refs that name no component:\n  {}",
        broken.join("\n  ")
    );
}

// ------------------------------------------------- the router, as documented

/// Errors of `value` against `schema`: the subset of OpenAPI 3.0 schemas the
/// document uses (type, nullable, enum, required, properties,
/// additionalProperties: false, items, minItems, maxItems, minLength, oneOf).
fn violations(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let schema = resolve(doc, schema);
    let mut out = Vec::new();
    if value.is_null() && schema["nullable"] == true {
        return out;
    }
    if let Some(variants) = schema["oneOf"].as_array() {
        let matching = variants
            .iter()
            .filter(|v| violations(doc, v, value, at).is_empty())
            .count();
        if matching != 1 {
            out.push(format!(
                "{at}: matches {matching} of the oneOf variants, not exactly one: {value}"
            ));
        }
        return out;
    }
    let type_ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        out.push(format!("{at}: {value} is not of type {}", schema["type"]));
        return out;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            out.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    if let (Some(min), Some(s)) = (schema["minLength"].as_u64(), value.as_str()) {
        if (s.chars().count() as u64) < min {
            out.push(format!("{at}: {value} is shorter than {min}"));
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema["properties"].as_object();
        for name in schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !object.contains_key(name) {
                out.push(format!(
                    "{at}: required property {name:?} is missing from {value}"
                ));
            }
        }
        for (name, v) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(s) => out.extend(violations(doc, s, v, &format!("{at}.{name}"))),
                None if schema["additionalProperties"] == false => {
                    out.push(format!("{at}: property {name:?} is not documented"))
                }
                None => {}
            }
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(min) = schema["minItems"].as_u64() {
            if (items.len() as u64) < min {
                out.push(format!("{at}: fewer than {min} items"));
            }
        }
        if let Some(max) = schema["maxItems"].as_u64() {
            if items.len() as u64 > max {
                out.push(format!("{at}: more than {max} items"));
            }
        }
        for (i, item) in items.iter().enumerate() {
            out.extend(violations(
                doc,
                &schema["items"],
                item,
                &format!("{at}[{i}]"),
            ));
        }
    }
    out
}

/// A gateway on a free local port whose Redis and Kafka are unreachable
/// (port 1): enough for every answer that needs neither, and for the 503s.
async fn start_gateway() -> (String, tokio::task::JoinHandle<()>) {
    let mut settings = Settings::default();
    settings.kafka.brokers = "127.0.0.1:1".into();
    settings.redis.url = "redis://127.0.0.1:1/".into();
    settings.redis.command_timeout = Duration::from_millis(500);
    let g = &mut settings.gateway;
    g.max_body_bytes = 4096;
    g.max_batch_events = 3;
    g.publish_timeout = Duration::from_millis(500);
    g.retry_after = Duration::from_secs(2);
    g.clients = vec![ClientSettings {
        id: "app".into(),
        api_key_sha256: hash_api_key("test-key"),
        employers: vec!["acme".into()],
    }];
    let config = Arc::new(Config {
        dir: PathBuf::from("."),
        settings,
        programs: Programs::default(),
    });
    let state = AppState::new(config).await.expect("gateway state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free local port");
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, gateway::router(state))
            .await
            .expect("serve");
    });
    (base, server)
}

struct Exchange {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

async fn send(
    client: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Exchange {
    let mut request = match method {
        "get" => client.get(format!("{base}{path}")),
        "post" => client.post(format!("{base}{path}")),
        other => panic!("no test requests for method {other}"),
    };
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap_or_default();
    Exchange {
        status,
        headers,
        body,
    }
}

/// Asserts that `x`, the answer to `method path`, is documented: its status,
/// its required headers, and its JSON body against the response's schema.
fn assert_documented(doc: &Value, method: &str, path: &str, x: &Exchange) -> Value {
    let what = format!(
        "{} {path} answered {} {:?}",
        method.to_uppercase(),
        x.status,
        x.body
    );
    let declared = &operation(doc, method, path)["responses"][x.status.to_string()];
    assert!(!declared.is_null(), "{what}, an undocumented status");
    let response = resolve(doc, declared);
    for name in response["headers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k)
    {
        if name != "Idempotent-Replayed" {
            assert!(
                x.headers.contains_key(name.as_str()),
                "{what} without the documented header {name}"
            );
        }
    }
    let content_type = x
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    let content = &response["content"];
    assert!(
        content.get(media).is_some(),
        "{what} as {content_type:?}, documented as {:?}",
        content.as_object().map(|c| c.keys().collect::<Vec<_>>())
    );
    if media != "application/json" {
        return Value::Null;
    }
    let body: Value =
        serde_json::from_str(&x.body).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
    let errors = violations(doc, &content[media]["schema"], &body, "body");
    assert!(
        errors.is_empty(),
        "{what}, not as documented:\n  {}",
        errors.join("\n  ")
    );
    body
}

fn data_logged(employer: &str, event_id: Option<&str>) -> Value {
    let mut e = json!({"user_id": "user-42", "employer_id": employer, "event_time": "2026-03-01T12:00:00Z", "time_zone": "Europe/Berlin", "data_kinds": ["mood"]});
    if let Some(id) = event_id {
        e["event_id"] = json!(id);
    }
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_serves_every_route_as_documented() {
    let doc = doc();
    let (base, server) = start_gateway().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let auth = ("authorization", "Bearer test-key");
    let post = |path: &'static str, headers: Vec<(&'static str, &'static str)>, body: String| {
        let (http, base) = (&http, &base);
        async move { send(http, base, "post", path, &headers, Some(body)).await }
    };

    // Every route is routed: GETs answer as documented, event routes want a key.
    for (method, path) in ROUTES {
        let body = (*method == "post").then(|| "{}".to_string());
        let x = send(&http, &base, method, path, &[], body).await;
        assert!(
            x.status != 404 && x.status != 405,
            "{} {path} is in ROUTES but not routed: {}",
            method.to_uppercase(),
            x.status
        );
        let body = assert_documented(&doc, method, path, &x);
        if path.starts_with("/v1/events/") {
            assert_eq!(x.status, 401, "{path} without a key");
            assert_eq!(
                x.headers
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap()),
                Some("Bearer")
            );
            assert_eq!(body["error"], "unauthorized");
        }
    }
    let x = send(&http, &base, "get", "/not-a-route", &[], None).await;
    assert_eq!(x.status, 404, "an unknown path");
    let x = send(&http, &base, "get", "/openapi.json", &[], None).await;
    assert_eq!(
        x.body, OPENAPI,
        "/openapi.json serves the checked-in document"
    );

    // 413: over gateway.max_body_bytes, before the key is even looked at.
    let big = json!({"user_id": "u".repeat(5000)}).to_string();
    for path in [
        "/v1/events/data-logged",
        "/v1/events/birth-reported",
        "/v1/events/batch",
    ] {
        assert_documented(&doc, "post", path, &post(path, vec![], big.clone()).await);
        let x = post(path, vec![auth], big.clone()).await;
        assert_eq!(x.status, 413, "{path} with a large body");
        assert_documented(&doc, "post", path, &x);
    }

    // 400s of single events.
    let path = "/v1/events/data-logged";
    let x = post(
        path,
        vec![auth, ("idempotency-key", "has spaces")],
        data_logged("acme", None).to_string(),
    )
    .await;
    let body = assert_documented(&doc, "post", path, &x);
    assert_eq!(
        (x.status, body["field"].as_str()),
        (400, Some("Idempotency-Key"))
    );
    let x = post(path, vec![auth], "{not json".into()).await;
    let body = assert_documented(&doc, "post", path, &x);
    assert_eq!((x.status, body["field"].as_str()), (400, Some("body")));
    let mut typed = data_logged("acme", None);
    typed["type"] = json!("data_logged");
    let x = post(path, vec![auth], typed.to_string()).await;
    assert_eq!(
        x.status, 400,
        "`type` is not a field of a single event: {}",
        x.body
    );
    let mut bad = data_logged("acme", None);
    bad["data_kinds"] = json!(["Mood"]);
    let x = post(path, vec![auth], bad.to_string()).await;
    let body = assert_documented(&doc, "post", path, &x);
    assert_eq!(
        (x.status, body["field"].as_str()),
        (400, Some("data_kinds"))
    );
    let x = post(
        "/v1/events/birth-reported",
        vec![auth],
        json!({"user_id": "u", "employer_id": "acme", "event_time": "2026-03-01T12:00:00Z", "birth_date": "2026-02-30"}).to_string(),
    )
    .await;
    let body = assert_documented(&doc, "post", "/v1/events/birth-reported", &x);
    assert_eq!(
        (x.status, body["field"].as_str()),
        (400, Some("birth_date"))
    );

    // 403: the client may not publish for this employer.
    let x = post(
        path,
        vec![auth],
        data_logged("globex", Some("e-1")).to_string(),
    )
    .await;
    let body = assert_documented(&doc, "post", path, &x);
    assert_eq!((x.status, body["error"].as_str()), (403, Some("forbidden")));

    // 503 with Retry-After: Redis down (an idempotency key is used) ...
    let x = post(
        path,
        vec![auth],
        data_logged("acme", Some("e-2")).to_string(),
    )
    .await;
    let body = assert_documented(&doc, "post", path, &x);
    assert_eq!(
        (x.status, body["error"].as_str()),
        (503, Some("not_stored")),
        "{}",
        x.body
    );
    assert_eq!(
        x.headers.get("retry-after").map(|v| v.to_str().unwrap()),
        Some("2")
    );
    // ... and Kafka down (no key, so no Redis: the publish times out).
    let x = post(
        "/v1/events/birth-reported",
        vec![auth],
        json!({"user_id": "u", "employer_id": "acme", "event_time": "2026-03-01T12:00:00Z", "birth_date": "2026-02-28"}).to_string(),
    )
    .await;
    let body = assert_documented(&doc, "post", "/v1/events/birth-reported", &x);
    assert_eq!(
        (x.status, body["error"].as_str()),
        (503, Some("not_stored")),
        "{}",
        x.body
    );

    // The batch: whole-request 400s, then one result per event.
    let path = "/v1/events/batch";
    for events in [json!([]), json!([{}, {}, {}, {}])] {
        let x = post(path, vec![auth], json!({ "events": events }).to_string()).await;
        let body = assert_documented(&doc, "post", path, &x);
        assert_eq!((x.status, body["field"].as_str()), (400, Some("events")));
    }
    let x = post(
        path,
        vec![auth],
        json!({"events": [], "extra": 1}).to_string(),
    )
    .await;
    assert_documented(&doc, "post", path, &x);
    assert_eq!(x.status, 400);
    let item = |employer: &str, id: &str| {
        let mut e = data_logged(employer, Some(id));
        e["type"] = json!("data_logged");
        e
    };
    let events = json!([{"type": "data_logged", "user_id": "u"}, item("globex", "b-1"), item("acme", "b-2")]);
    let x = post(
        path,
        vec![auth, ("idempotency-key", "ignored-here")],
        json!({ "events": events }).to_string(),
    )
    .await;
    let body = assert_documented(&doc, "post", path, &x);
    assert_eq!(x.status, 200);
    let statuses: Vec<(u64, u64)> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(statuses, [(0, 400), (1, 403), (2, 503)], "{}", x.body);

    server.abort();
}

#[test]
fn the_violations_check_has_teeth() {
    let doc = doc();
    let accepted = json!({"$ref": "#/components/schemas/Accepted"});
    let good = json!({"event_id": "e", "topic": "t", "partition": 0, "offset": 1});
    assert!(violations(&doc, &accepted, &good, "body").is_empty());
    let missing = json!({"event_id": "e", "topic": "t", "partition": 0});
    assert!(!violations(&doc, &accepted, &missing, "body").is_empty());
    let item = json!({"$ref": "#/components/schemas/BatchItemResult"});
    assert!(!violations(
        &doc,
        &item,
        &json!({"index": 0, "status": 401, "error": "unauthorized", "detail": "d"}),
        "item"
    )
    .is_empty());
}
