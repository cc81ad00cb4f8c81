//! The pages' two languages: Fluent files compiled in (`api/locales/{en-US,zh-CN}/*.ftl`),
//! chosen per request (the `fy_lang` cookie, else `Accept-Language`), and times shown in the
//! viewer's time zone (the `fy_tz` cookie the pages' script sets; UTC without it).

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
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

    fn id(self) -> &'static LanguageIdentifier {
        match self {
            Lang::En => &EN,
            Lang::ZhCn => &ZH,
        }
    }
}

/// Translating for one request: texts by key, words for the API's values, and times in the
/// viewer's zone.
#[derive(Debug, Clone)]
pub struct Tr {
    pub lang: Lang,
    pub tz: chrono_tz::Tz,
}

impl Tr {
    /// The text of `key`.
    pub fn t(&self, key: &str) -> String {
        LOCALES.lookup(self.lang.id(), key)
    }

    /// The text of `key` with one argument, `$n` in the Fluent text.
    pub fn n(&self, key: &str, n: i64) -> String {
        let args = std::collections::HashMap::from([(std::borrow::Cow::Borrowed("n"), FluentValue::from(n))]);
        LOCALES.lookup_with_args(self.lang.id(), key, &args)
    }

    /// A value of the API (`ready`, `riscv64`, `usage_right`) in words: the key
    /// `<kind>-<value>`, or the value itself where it needs no translation.
    pub fn word(&self, kind: &str, value: impl std::fmt::Display) -> String {
        let value = value.to_string();
        let key = format!("{kind}-{}", value.replace('_', "-"));
        if LOCALES.try_lookup(self.lang.id(), &key).is_some() { self.t(&key) } else { value }
    }

    /// A time in the viewer's zone, to the minute, with the zone's abbreviation.
    pub fn time(&self, at: &DateTime<Utc>) -> String {
        at.with_timezone(&self.tz).format("%Y-%m-%d %H:%M %Z").to_string()
    }

    pub fn time_opt(&self, at: &Option<DateTime<Utc>>) -> String {
        at.as_ref().map_or_else(|| "—".to_owned(), |at| self.time(at))
    }

    /// A length of time in the largest two units (`3 h 20 min`, `2 d 4 h`).
    pub fn duration_secs(&self, secs: f64) -> String {
        let secs = secs.max(0.0) as i64;
        let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
        let (du, hu, mu) = match self.lang {
            Lang::En => (" d", " h", " min"),
            Lang::ZhCn => (" 天", " 小时", " 分钟"),
        };
        if d > 0 {
            format!("{d}{du} {h}{hu}")
        } else if h > 0 {
            format!("{h}{hu} {m}{mu}")
        } else {
            format!("{m}{mu}")
        }
    }

    /// How long ago `at` was.
    pub fn since(&self, at: &Option<DateTime<Utc>>) -> String {
        match at {
            Some(at) => self.duration_secs((Utc::now() - *at).num_seconds() as f64),
            None => "—".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    fn keys(lang: &str) -> BTreeSet<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("locales").join(lang);
        let mut keys = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).expect("a locale folder") {
            let text = std::fs::read_to_string(entry.expect("an entry").path()).expect("an ftl file");
            for line in text.lines() {
                if let Some((key, _)) = line.split_once(" =")
                    && !key.starts_with(['#', ' ', '.', '-'])
                    && !key.is_empty()
                {
                    assert!(keys.insert(key.to_owned()), "{lang}: `{key}` is defined twice");
                }
            }
        }
        keys
    }

    #[test]
    fn every_text_exists_in_both_languages() {
        let (en, zh) = (keys("en-US"), keys("zh-CN"));
        let missing_zh: Vec<_> = en.difference(&zh).collect();
        let missing_en: Vec<_> = zh.difference(&en).collect();
        assert!(missing_zh.is_empty(), "in English, not in Chinese: {missing_zh:?}");
        assert!(missing_en.is_empty(), "in Chinese, not in English: {missing_en:?}");
    }

    #[test]
    fn every_key_the_templates_and_pages_use_is_defined() {
        let en = keys("en-US");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files: Vec<_> = std::fs::read_dir(root.join("templates")).unwrap().map(|e| e.unwrap().path()).collect();
        files.extend(std::fs::read_dir(root.join("src/ui")).unwrap().map(|e| e.unwrap().path()));
        let mut missing = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for call in [".t(\"", ".n(\""] {
                for piece in text.split(call).skip(1) {
                    let key = piece.split('"').next().unwrap();
                    if !en.contains(key) {
                        missing.push(format!("{}: {key}", file.display()));
                    }
                }
            }
        }
        assert!(missing.is_empty(), "keys used but not defined: {missing:#?}");
    }

    #[test]
    fn the_browser_s_language_is_read_with_its_weights() {
        assert_eq!(Lang::from_accept_language("zh-CN,zh;q=0.9,en;q=0.8"), Some(Lang::ZhCn));
        assert_eq!(Lang::from_accept_language("en-US,en;q=0.9"), Some(Lang::En));
        assert_eq!(Lang::from_accept_language("fr, en;q=0.5, zh;q=0.7"), Some(Lang::ZhCn));
        assert_eq!(Lang::from_accept_language("fr"), None);
    }

    #[test]
    fn values_are_translated_and_unknown_ones_shown_as_they_are() {
        let zh = Tr { lang: Lang::ZhCn, tz: chrono_tz::Asia::Shanghai };
        assert_eq!(zh.word("lifecycle", "ready"), "可用");
        assert_eq!(zh.word("arch", "riscv64"), "riscv64");
        let at = DateTime::parse_from_rfc3339("2026-12-06T00:30:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(zh.time(&at), "2026-12-06 08:30 CST");
    }
}
