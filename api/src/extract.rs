//! Request extractors whose errors name the offending field: a JSON body and a query string.
//!
//! actix's own `Json` and `Query` report serde errors without saying where they happened; a
//! donor filling in a 40-machine form needs `machines[17].arch: unknown variant ...`.

use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use futures_util::FutureExt;
use futures_util::future::{Either, LocalBoxFuture, Map, Ready, ready};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::domain::Problem;
use crate::error::ApiError;
use crate::error_code::ErrorCode;

/// A JSON request body, deserialised with the path of any error recorded.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = JsonBody::from_request(req, payload);
        Box::pin(async move { parse_owned(&body.await?.0).map(Json) })
    }
}

/// Like [`parse_json`], for a type that owns its data, and with JSON's view of numbers: an
/// integer may be written `2.0` (JSON Schema counts it an integer; serde would not).
fn parse_owned<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    refuse_nul_in_json(bytes)?;
    refuse_non_object(bytes)?;
    serde_json::from_slice(bytes).or_else(|_| {
        if let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(bytes)
            && integral_floats_as_integers(&mut value)
            && let Ok(parsed) = serde_json::from_value(value)
        {
            return Ok(parsed);
        }
        explain_json_error(bytes)
    })
}

/// Turns every number written with a fraction of zero (`2.0`, `1e3`) into an integer; says
/// whether there was one.
fn integral_floats_as_integers(value: &mut serde_json::Value) -> bool {
    match value {
        serde_json::Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // Within the range where every integer is exact and i64 holds it.
            if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
                *value = serde_json::Value::from(f as i64);
                return true;
            }
            false
        }
        serde_json::Value::Array(items) => {
            // Every item is visited (no short cut): each may hold a number to turn.
            let mut any = false;
            for item in items {
                any |= integral_floats_as_integers(item);
            }
            any
        }
        serde_json::Value::Object(map) => {
            let mut any = false;
            for item in map.values_mut() {
                any |= integral_floats_as_integers(item);
            }
            any
        }
        _ => false,
    }
}

/// Every body Fleetyard takes is a JSON object; serde would also read a struct from an array
/// of its fields in order, which no client means.
fn refuse_non_object(bytes: &[u8]) -> Result<(), ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => Ok(()),
        Some(_) if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_err() => Ok(()),
        Some(_) => Err(ApiError::invalid_field("body", Problem::NotAJsonObject)),
    }
}

/// A JSON request body, checked (content type, size) but not yet parsed: for a handler that
/// parses it into a type borrowing from it.
#[derive(Debug)]
pub struct JsonBody(web::Bytes);

impl JsonBody {
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, ApiError> {
        parse_json(&self.0)
    }
}

/// The body as read by actix, turned into a [`JsonBody`] or an API error.
type ReadBody =
    Map<<web::Bytes as FromRequest>::Future, fn(Result<web::Bytes, actix_web::Error>) -> Result<JsonBody, ApiError>>;

impl FromRequest for JsonBody {
    type Error = ApiError;
    // Named rather than boxed: every heartbeat goes through this.
    type Future = Either<Ready<Result<Self, ApiError>>, ReadBody>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let is_json = req
            .mime_type()
            .ok()
            .flatten()
            .is_some_and(|mime| mime.subtype() == "json" || mime.suffix().is_some_and(|s| s == "json"));
        if !is_json {
            return Either::Left(ready(Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                "send the request body as JSON with `Content-Type: application/json`",
            ))));
        }
        Either::Right(web::Bytes::from_request(req, payload).map(read_body))
    }
}

fn read_body(body: Result<web::Bytes, actix_web::Error>) -> Result<JsonBody, ApiError> {
    body.map(JsonBody).map_err(|error| match error.as_error::<PayloadError>() {
        Some(PayloadError::Overflow) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BodyTooLarge,
            "the request body is larger than this server accepts",
        ),
        _ => ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::UnreadableBody, error.to_string()),
    })
}

/// Deserialises `bytes` as `T`, turning serde's errors into field-named API errors. Valid
/// bodies take plain serde_json; only a body that fails is parsed again with path tracking,
/// to say where it went wrong.
pub fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    refuse_nul_in_json(bytes)?;
    serde_json::from_slice(bytes).or_else(|_| {
        refuse_non_object(bytes)?;
        explain_json_error(bytes)
    })
}

/// PostgreSQL text cannot hold the NUL character, so no string that has one goes further.
/// JSON can only carry it escaped (`\u0000`); a body without that sequence is passed at the
/// cost of one scan, one with it is read to name the field.
fn refuse_nul_in_json(bytes: &[u8]) -> Result<(), ApiError> {
    if !bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000")) {
        return Ok(());
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else { return Ok(()) };
    match field_with_nul(&value, String::new()) {
        Some(field) => Err(ApiError::invalid_field(field, Problem::Nul)),
        None => Ok(()),
    }
}

/// The path (`machines[2].labels.k`) of the first string or key in `value` holding a NUL.
fn field_with_nul(value: &serde_json::Value, at: String) -> Option<String> {
    let join = |key: &str| if at.is_empty() { key.to_owned() } else { format!("{at}.{key}") };
    match value {
        serde_json::Value::String(s) if s.contains('\0') => Some(if at.is_empty() { "body".to_owned() } else { at }),
        serde_json::Value::Array(items) => {
            items.iter().enumerate().find_map(|(i, item)| field_with_nul(item, format!("{at}[{i}]")))
        }
        serde_json::Value::Object(map) => map.iter().find_map(|(key, item)| {
            if key.contains('\0') { Some(join(&key.replace('\0', "\\u0000"))) } else { field_with_nul(item, join(key)) }
        }),
        _ => None,
    }
}

/// The first query parameter whose name or value, decoded, holds a NUL.
fn query_param_with_nul(query: &str) -> Option<String> {
    if !query.contains("%00") {
        return None;
    }
    let decode = |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (key, value) = (decode(key), decode(value));
        (key.contains('\0') || value.contains('\0')).then(|| key.replace('\0', "%00"))
    })
}

/// Like [`parse_json`] for a value that was embedded at `field` of a larger body (errors name
/// `field.inner.path`).
pub fn parse_json_at<T: DeserializeOwned>(bytes: &[u8], field: &str) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).or_else(|_| {
        let mut wrapped = Vec::with_capacity(bytes.len() + field.len() + 6);
        wrapped.extend_from_slice(b"{\"");
        wrapped.extend_from_slice(field.as_bytes());
        wrapped.extend_from_slice(b"\":");
        wrapped.extend_from_slice(bytes);
        wrapped.push(b'}');
        explain_json_error::<std::collections::HashMap<String, T>>(&wrapped)
            .map(|mut map| map.remove(field).expect("the wrapper has the field"))
    })
}

fn explain_json_error<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    let malformed = |inner: &serde_json::Error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::MalformedJson,
            format!("the request body is not valid JSON: {inner}"),
        )
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let (field, problem) = field_and_problem(&path, &strip_position(&inner));
                ApiError::invalid_field(field, problem)
            }
            serde_json::error::Category::Eof if bytes.iter().all(u8::is_ascii_whitespace) => ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::MalformedJson,
                "the request body is empty; expected a JSON object",
            ),
            _ => malformed(&inner),
        }
    })?;
    deserializer.end().map_err(|e| malformed(&e))?;
    Ok(value)
}

/// A query string, deserialised with the name of any bad parameter recorded. Repeated
/// parameters (`?label=a=1&label=b=2`) deserialise into a `Vec`.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T> Query<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Query<T> {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(parse_query(req.query_string()).map(Query))
    }
}

/// A query string (or a form body) deserialised as [`Query`] does, naming any bad parameter.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    if let Some(field) = query_param_with_nul(query) {
        return Err(ApiError::invalid_field(field, Problem::Nul));
    }
    let deserializer = serde_html_form::Deserializer::from_bytes(query.as_bytes());
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let (field, problem) = field_and_problem(&path, &error.into_inner().to_string());
        ApiError::invalid_field(field, problem)
    })
}

fn strip_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// serde reports a missing or unknown field at its parent's path; move the field name into
/// the path so the client sees `machines[0].arch: is required`.
fn field_and_problem(path: &str, message: &str) -> (String, Problem) {
    // An unknown field's own key is already the last segment of the path; a missing one's is not.
    let join = |name: &str| {
        if path == "." || path.is_empty() {
            name.to_owned()
        } else if path == name || path.ends_with(&format!(".{name}")) {
            path.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    let problem = Problem::from_serde(message);
    let name = backticked_after(message, "missing field ").or_else(|| backticked_after(message, "unknown field "));
    if let Some(name) = name {
        return (join(name), problem);
    }
    let field = if path == "." || path.is_empty() { "body".to_owned() } else { path.to_owned() };
    (field, problem)
}

fn backticked_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.split_once('`').map(|(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        items: Vec<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        size: u32,
        arch: crate::domain::Arch,
    }

    fn problem(body: &str) -> (u16, String) {
        let error = parse_json::<Outer>(body.as_bytes()).unwrap_err();
        (actix_web::ResponseError::status_code(&error).as_u16(), error.to_string())
    }

    #[test]
    fn errors_name_the_field_they_are_about() {
        let (status, text) = problem(r#"{"items": [{"size": 1, "arch": "sparc"}]}"#);
        assert_eq!(status, 422);
        assert!(text.starts_with("validation-failed: items[0].arch: `sparc` is not one of `x86_64`"), "{text}");

        let (_, text) = problem(r#"{"items": [{"size": 1}]}"#);
        assert_eq!(text, "validation-failed: items[0].arch: is required");

        let (_, text) = problem(r#"{"items": [{"size": 1, "arch": "riscv64", "colour": "red"}]}"#);
        assert!(text.starts_with("validation-failed: items[0].colour: is not a known field"), "{text}");

        let (_, text) = problem(r#"{"items": [{"size": -1, "arch": "riscv64"}]}"#);
        assert_eq!(text, "validation-failed: items[0].size: must be between 0 and 4294967295");
    }

    #[test]
    fn a_nul_character_anywhere_in_a_body_or_a_query_is_refused_naming_the_field() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Login {
            email: String,
            labels: std::collections::BTreeMap<String, String>,
        }
        let refused = |body: &str| parse_json::<Login>(body.as_bytes()).unwrap_err().to_string();
        assert!(refused(r#"{"email": "a\u0000b", "labels": {}}"#).contains("email: must not contain the NUL"));
        assert!(refused(r#"{"email": "a", "labels": {"k": "\u0000"}}"#).contains("labels.k: must not"));
        // An escaped backslash followed by `u0000` is six ordinary characters.
        assert!(parse_json::<Login>(br#"{"email": "a\\u0000", "labels": {}}"#).is_ok());
        assert_eq!(query_param_with_nul("state=queued&search=a%00b"), Some("search".to_owned()));
        assert_eq!(query_param_with_nul("search=a%2500b"), None);
    }

    #[test]
    fn integers_may_be_written_with_a_zero_fraction_and_bodies_must_be_objects() {
        #[derive(Debug, Deserialize, PartialEq)]
        struct Policy {
            max_concurrent_leases: i32,
            windows: Vec<u8>,
        }
        let parsed: Policy = parse_owned(br#"{"max_concurrent_leases": 2.0, "windows": [1e1]}"#).unwrap();
        assert_eq!(parsed, Policy { max_concurrent_leases: 2, windows: vec![10] });
        let half = parse_owned::<Policy>(br#"{"max_concurrent_leases": 2.5, "windows": []}"#).unwrap_err();
        assert!(half.to_string().contains("max_concurrent_leases"), "{half}");
        let array = parse_owned::<Policy>(b"[2, []]").unwrap_err();
        assert_eq!(array.to_string(), "validation-failed: body: must be a JSON object");
    }

    #[test]
    fn broken_json_is_a_bad_request() {
        assert_eq!(problem(r#"{"items": [}"#).0, 400);
        assert_eq!(problem("").0, 400);
        assert_eq!(problem(r#"{"items": []} trailing"#).0, 400);
    }
}

/// The address a request came from: the peer's, or, when the peer is a trusted proxy, the
/// nearest address in `X-Forwarded-For` that is not one (proxies append what they saw).
pub fn client_address(req: &HttpRequest, trusted: &[ipnet::IpNet]) -> String {
    let Some(peer) = req.peer_addr().map(|a| a.ip()) else { return "unknown".to_owned() };
    let forwarded = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()).unwrap_or_default();
    nearest_untrusted(peer, forwarded, trusted).to_string()
}

fn nearest_untrusted(peer: std::net::IpAddr, forwarded: &str, trusted: &[ipnet::IpNet]) -> std::net::IpAddr {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut nearest = peer;
    for hop in forwarded.split(',').rev().map_while(|hop| hop.trim().parse::<std::net::IpAddr>().ok()) {
        nearest = hop;
        if !is_trusted(&hop) {
            break;
        }
    }
    nearest
}

#[cfg(test)]
mod client_address_tests {
    use super::nearest_untrusted;

    #[test]
    fn the_client_address_is_read_through_trusted_proxies_only() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        // Straight from a client: its own address, whatever it claims.
        assert_eq!(nearest_untrusted(ip("203.0.113.7"), "198.51.100.1", &trusted), ip("203.0.113.7"));
        // Through the proxy: the nearest hop the proxies did not add themselves.
        assert_eq!(nearest_untrusted(ip("10.0.0.2"), "198.51.100.1, 203.0.113.9", &trusted), ip("203.0.113.9"));
        assert_eq!(nearest_untrusted(ip("10.0.0.2"), "203.0.113.9, 10.0.0.5", &trusted), ip("203.0.113.9"));
        // A proxy that sent nothing usable: the proxy's address.
        assert_eq!(nearest_untrusted(ip("10.0.0.2"), "", &trusted), ip("10.0.0.2"));
        assert_eq!(nearest_untrusted(ip("10.0.0.2"), "not an address", &trusted), ip("10.0.0.2"));
    }
}
