//! The texts people read, in English and Simplified Chinese: Fluent files compiled in
//! (`api/locales/{en-US,zh-CN}/*.ftl`). The pages' words are here, and so is every problem the
//! API names ([`crate::domain::Problem`]) and every error code
//! ([`crate::error_code::ErrorCode`]): the API answers in English from the same files the pages
//! translate from. Reasons Fleetyard records as English text are read back here
//! ([`read_recorded`]) so that the pages can show them translated.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::LazyLock;

use fluent_templates::fluent_bundle::FluentValue;
use fluent_templates::{LanguageIdentifier, Loader};

fluent_templates::static_loader! {
    static LOCALES = {
        locales: "./locales",
        fallback_language: "en-US",
        // Unicode isolation marks around arguments would show up in text copied from a page.
        customise: |bundle| bundle.set_use_isolating(false),
    };
}

/// The languages of the pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    ZhCn,
}

static EN: LazyLock<LanguageIdentifier> = LazyLock::new(|| "en-US".parse().expect("a language tag"));
static ZH: LazyLock<LanguageIdentifier> = LazyLock::new(|| "zh-CN".parse().expect("a language tag"));

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::En, Lang::ZhCn];

    /// The tag in `<html lang>`, the cookie and the switcher.
    pub fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::ZhCn => "zh-CN",
        }
    }

    /// The language's own name, for the switcher.
    pub fn name(self) -> &'static str {
        match self {
            Lang::En => "English",
            Lang::ZhCn => "简体中文",
        }
    }

    pub fn from_tag(tag: &str) -> Option<Lang> {
        let tag = tag.trim().to_ascii_lowercase();
        if tag == "en" || tag.starts_with("en-") {
            Some(Lang::En)
        } else if tag == "zh" || tag.starts_with("zh-") {
            // Simplified Chinese is the only Chinese the pages have.
            Some(Lang::ZhCn)
        } else {
            None
        }
    }

    /// The first language of an `Accept-Language` header the pages have (weights honoured).
    pub fn from_accept_language(header: &str) -> Option<Lang> {
        let mut ranked: Vec<(f32, Lang)> = header
            .split(',')
            .filter_map(|part| {
                let mut pieces = part.split(';');
                let lang = Lang::from_tag(pieces.next()?)?;
                let q =
                    pieces.find_map(|p| p.trim().strip_prefix("q=").and_then(|q| q.parse::<f32>().ok())).unwrap_or(1.0);
                Some((q, lang))
            })
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        ranked.first().map(|(_, lang)| *lang)
    }

    pub(crate) fn id(self) -> &'static LanguageIdentifier {
        match self {
            Lang::En => &EN,
            Lang::ZhCn => &ZH,
        }
    }
}

/// The arguments of a text, `$name` in the Fluent files.
pub type Args = HashMap<Cow<'static, str>, FluentValue<'static>>;

/// The text of `key` in `lang`.
pub fn text(lang: Lang, key: &str) -> String {
    LOCALES.lookup(lang.id(), key)
}

/// The text of `key` in `lang` with its arguments.
pub fn text_with(lang: Lang, key: &str, args: &Args) -> String {
    LOCALES.lookup_with_args(lang.id(), key, args)
}

/// Whether `lang` itself (not its fallback) has a text for `key`.
pub fn has(lang: Lang, key: &str) -> bool {
    // The loader's error type is private: a text that exists but lacks arguments here is a
    // formatting error ("Fluent errors: ..."), one that does not is any other.
    match LOCALES.lookup_single_language::<&str>(lang.id(), key, None) {
        Ok(_) => true,
        Err(e) => e.to_string().starts_with("Fluent errors"),
    }
}

/// The text of `key` in `lang` itself, with every argument it names among `args`; what is
/// wrong otherwise (for tests).
pub fn exact(lang: Lang, key: &str, args: &Args) -> Result<String, String> {
    LOCALES.lookup_single_language(lang.id(), key, Some(args)).map_err(|e| e.to_string())
}

/// A JSON object's scalar members as text arguments (numbers stay numbers; other values are
/// written out as JSON).
pub fn args_of(object: &serde_json::Value) -> Args {
    let mut args = Args::new();
    for (name, value) in object.as_object().into_iter().flatten() {
        let value = match value {
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => FluentValue::from(i),
                None => FluentValue::from(n.as_f64().unwrap_or_default()),
            },
            serde_json::Value::String(s) => FluentValue::from(s.clone()),
            serde_json::Value::Array(items) => FluentValue::from(
                items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            other => FluentValue::from(other.to_string()),
        };
        args.insert(Cow::Owned(name.clone()), value);
    }
    args
}

/// A recorded English text's template (`said-*` in `recorded.ftl`): its literal pieces and the
/// names of its arguments, in order.
struct Template {
    key: &'static str,
    pieces: Vec<Piece>,
}

enum Piece {
    Text(&'static str),
    Arg(&'static str),
}

/// The templates, the most specific first (the longest literal text): `no heartbeat since
/// { $at } and the SSH check failed` is tried before `no heartbeat since { $at }`.
static RECORDED: LazyLock<Vec<Template>> = LazyLock::new(|| {
    let mut templates: Vec<Template> = include_str!("../locales/en-US/recorded.ftl")
        .lines()
        .filter_map(|line| line.split_once(" = "))
        .filter(|(key, _)| key.starts_with("said-"))
        .map(|(key, mut text)| {
            let mut pieces = Vec::new();
            while let Some((before, rest)) = text.split_once("{ $") {
                let (name, after) = rest.split_once(" }").expect("a placeable is `{ $name }`");
                if !before.is_empty() {
                    pieces.push(Piece::Text(before));
                }
                pieces.push(Piece::Arg(name));
                text = after;
            }
            if !text.is_empty() {
                pieces.push(Piece::Text(text));
            }
            Template { key, pieces }
        })
        .collect();
    let literal =
        |t: &Template| t.pieces.iter().map(|p| if let Piece::Text(s) = p { s.len() } else { 0 }).sum::<usize>();
    templates.sort_by_key(|t| std::cmp::Reverse(literal(t)));
    templates
});

/// A text Fleetyard recorded in English (a health reason, why a lease ended, a cloud note) read
/// back: the key of its template and its arguments, or `None` for a text no template makes (a
/// person's note, an error from elsewhere). An argument named `said_*` is itself a recorded
/// text, and must read back too.
pub fn read_recorded(text: &str) -> Option<(&'static str, Vec<(&'static str, &str)>)> {
    RECORDED.iter().find_map(|template| {
        let mut rest = text;
        let mut args = Vec::new();
        for (i, piece) in template.pieces.iter().enumerate() {
            match piece {
                Piece::Text(literal) => rest = rest.strip_prefix(literal)?,
                Piece::Arg(name) => {
                    let end = match template.pieces.get(i + 1) {
                        Some(Piece::Text(next)) => rest.find(next)?,
                        _ => rest.len(),
                    };
                    let value = &rest[..end];
                    if value.is_empty() || (name.starts_with("said_") && read_recorded(value).is_none()) {
                        return None;
                    }
                    args.push((*name, value));
                    rest = &rest[end..];
                }
            }
        }
        rest.is_empty().then_some((template.key, args))
    })
}
