//! The principal of a TLS client certificate (mTLS on the Kafka listener), as Kafka names it.
//!
//! Kafka's `DefaultKafkaPrincipalBuilder` takes the certificate's subject as Java's
//! `X500Principal.getName()` prints it — RFC 2253: the RDNs last-first, `CN=alice,OU=eng,O=Acme`,
//! the keywords `CN L ST O OU C STREET DC UID`, any other attribute as `1.2.3.4=#<hex DER>`,
//! and `, + " \ < > ;` (and a leading `#` or space, a trailing space) escaped with `\` — then
//! applies `ssl.principal.mapping.rules` (here `kafka.tls_principal_mapping`): a list of
//! `RULE:pattern/replacement/[LU]` and `DEFAULT`, the first rule whose pattern matches the
//! *whole* DN wins; its replacement (`$1` …) is applied to the DN, then lower- (`L`) or
//! upper-cased (`U`); `DEFAULT` keeps the DN. A DN no rule matches is refused (Kafka closes
//! the connection). The principal is then `User:<name>`.
//!
//! Patterns are Rust `regex` syntax, which agrees with Java's on the usual rules
//! (`^CN=(.*?),OU=(.*?),.*$`); look-around and back-references are not available.
//!
//! Sans-IO: [`subject_dn`] reads only the DER it is given (no X.509 crate: the subject is
//! the one field needed, and the certificate was already verified by rustls).

use regex::Regex;

/// One `kafka.tls_principal_mapping` rule.
#[derive(Debug, Clone)]
enum Rule {
    Default,
    Rule {
        /// The pattern anchored at both ends (Java's `Matcher.matches`).
        whole: Regex,
        /// The pattern as written, for the replacement (Java's `replaceAll`).
        pattern: Regex,
        replacement: String,
        case: Case,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Keep,
    Lower,
    Upper,
}

/// The validated `kafka.tls_principal_mapping`.
#[derive(Debug, Clone)]
pub struct PrincipalMapping {
    rules: Vec<Rule>,
}

impl Default for PrincipalMapping {
    fn default() -> Self {
        Self {
            rules: vec![Rule::Default],
        }
    }
}

impl PrincipalMapping {
    /// Parses the rules; the error says which rule is wrong and why.
    pub fn parse(rules: &[String]) -> Result<Self, String> {
        if rules.is_empty() {
            return Err("no rules: use [\"DEFAULT\"] for the full DN".into());
        }
        let mut out = Vec::with_capacity(rules.len());
        for (i, text) in rules.iter().enumerate() {
            let text = text.trim();
            out.push(parse_rule(text).map_err(|e| format!("rule {i} `{text}`: {e}"))?);
        }
        Ok(Self { rules: out })
    }

    /// The principal name of `dn` (without `User:`); `None` when no rule matches.
    pub fn apply(&self, dn: &str) -> Option<String> {
        self.rules.iter().find_map(|rule| match rule {
            Rule::Default => Some(dn.to_string()),
            Rule::Rule {
                whole,
                pattern,
                replacement,
                case,
            } => {
                if !whole.is_match(dn) {
                    return None;
                }
                let name = pattern.replace_all(dn, replacement.as_str()).into_owned();
                Some(match case {
                    Case::Keep => name,
                    Case::Lower => name.to_lowercase(),
                    Case::Upper => name.to_uppercase(),
                })
            }
        })
    }
}

fn parse_rule(text: &str) -> Result<Rule, String> {
    if text == "DEFAULT" {
        return Ok(Rule::Default);
    }
    let Some(body) = text.strip_prefix("RULE:") else {
        return Err("expected DEFAULT or RULE:pattern/replacement/[LU]".into());
    };
    // Split at unescaped `/` (`\/` is a literal slash, as in Kafka's rule syntax).
    let mut parts = vec![String::new()];
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'/') => {
                chars.next();
                parts.last_mut().expect("non-empty").push('/');
            }
            '/' => parts.push(String::new()),
            c => parts.last_mut().expect("non-empty").push(c),
        }
    }
    let [pattern, replacement, flags] = <[String; 3]>::try_from(parts)
        .map_err(|_| "expected RULE:pattern/replacement/ with an optional L or U flag")?;
    let case = match flags.as_str() {
        "" => Case::Keep,
        "L" => Case::Lower,
        "U" => Case::Upper,
        other => return Err(format!("unknown flag `{other}`; expected L, U or nothing")),
    };
    let whole = Regex::new(&format!("^(?:{pattern})$")).map_err(|e| e.to_string())?;
    let pattern = Regex::new(&pattern).map_err(|e| e.to_string())?;
    Ok(Rule::Rule {
        whole,
        pattern,
        replacement: java_replacement(&replacement),
        case,
    })
}

/// Java's `$1x` is group 1 then `x`; Rust's `$1x` is the group named `1x`: brace the digits.
fn java_replacement(r: &str) -> String {
    let mut out = String::with_capacity(r.len() + 4);
    let mut chars = r.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                // Java: `\$` is a literal dollar, `\\` a backslash.
                if let Some(n) = chars.next() {
                    if n == '$' {
                        out.push_str("$$");
                    } else {
                        out.push(n);
                    }
                }
            }
            '$' if chars.peek().is_some_and(|d| d.is_ascii_digit()) => {
                out.push_str("${");
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    out.push(*d);
                    chars.next();
                }
                out.push('}');
            }
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The subject DN of a DER certificate.

/// One DER element: (tag, contents, what follows it).
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// The certificate's subject as Kafka (Java's RFC 2253 form) prints it; `None` when the DER is
/// not a certificate.
pub fn subject_dn(cert_der: &[u8]) -> Option<String> {
    name_rfc2253(subject(cert_der)?)
}

/// The certificate's most specific Common Name (the last CN of its subject, the first one
/// RFC 2253 prints); `None` without one (or when the DER is not a certificate).
pub fn subject_cn(cert_der: &[u8]) -> Option<String> {
    let rdns = rdns(subject(cert_der)?)?;
    let cn = rdns.iter().flatten().rfind(|a| a.oid == CN_OID)?;
    text(cn.tag, cn.value)
}

/// The contents of the certificate's subject Name SEQUENCE.
fn subject(cert_der: &[u8]) -> Option<&[u8]> {
    let (tag, cert, _) = element(cert_der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    // [0] EXPLICIT version, optional.
    if rest.first() == Some(&0xa0) {
        rest = element(rest)?.2;
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (tag, subject, _) = element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    Some(subject)
}

/// One attribute of a Name: its OID, its value's tag and contents, and the value's whole DER.
struct Atv<'a> {
    oid: &'a [u8],
    tag: u8,
    value: &'a [u8],
    value_der: &'a [u8],
}

const CN_OID: &[u8] = &[0x55, 0x04, 0x03];

/// The RDNs of an X.501 Name (the contents of its SEQUENCE), in encoding order, each its
/// attributes; `None` when it does not parse.
fn rdns(mut name: &[u8]) -> Option<Vec<Vec<Atv<'_>>>> {
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (tag, mut set, rest) = element(name)?;
        if tag != SET {
            return None;
        }
        name = rest;
        let mut atvs = Vec::new();
        while !set.is_empty() {
            let (tag, atv, rest) = element(set)?;
            if tag != SEQUENCE {
                return None;
            }
            set = rest;
            let (tag, oid, value_der) = element(atv)?;
            if tag != OID {
                return None;
            }
            let (vtag, value, after) = element(value_der)?;
            atvs.push(Atv {
                oid,
                tag: vtag,
                value,
                value_der: &value_der[..value_der.len() - after.len()],
            });
        }
        rdns.push(atvs);
    }
    Some(rdns)
}

/// An X.501 Name (the contents of its SEQUENCE) in RFC 2253 form: last RDN first.
fn name_rfc2253(name: &[u8]) -> Option<String> {
    let mut out = Vec::new();
    for rdn in rdns(name)?.iter().rev() {
        let atvs = rdn
            .iter()
            .map(|a| attribute(a.oid, a.tag, a.value, a.value_der))
            .collect::<Option<Vec<_>>>()?;
        out.push(atvs.join("+"));
    }
    Some(out.join(","))
}

/// `KEY=value` for one attribute: a keyword and an escaped string, or `oid=#hex`.
fn attribute(oid: &[u8], tag: u8, value: &[u8], value_der: &[u8]) -> Option<String> {
    let keyword = match oid {
        CN_OID => Some("CN"),
        [0x55, 0x04, 0x06] => Some("C"),
        [0x55, 0x04, 0x07] => Some("L"),
        [0x55, 0x04, 0x08] => Some("ST"),
        [0x55, 0x04, 0x09] => Some("STREET"),
        [0x55, 0x04, 0x0a] => Some("O"),
        [0x55, 0x04, 0x0b] => Some("OU"),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => Some("DC"),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => Some("UID"),
        _ => None,
    };
    Some(match (keyword, text(tag, value)) {
        (Some(k), Some(t)) => format!("{k}={}", escape(&t)),
        _ => format!("{}=#{}", oid_dotted(oid)?, hex(value_der)),
    })
}

/// An attribute value's string, for the string types certificates use.
fn text(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String, VisibleString.
        0x0c | 0x13 | 0x16 | 0x1a => std::str::from_utf8(value).ok().map(str::to_string),
        // TeletexString: read as Latin-1, as Java does.
        0x14 => Some(value.iter().map(|b| *b as char).collect()),
        // BMPString: UTF-16BE.
        0x1e if value.len().is_multiple_of(2) => String::from_utf16(
            &value
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect::<Vec<_>>(),
        )
        .ok(),
        _ => None,
    }
}

fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn oid_dotted(oid: &[u8]) -> Option<String> {
    let mut arcs: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    for (i, b) in oid.iter().enumerate() {
        acc = acc.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (acc / 40).min(2);
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        } else if i == oid.len() - 1 {
            return None;
        }
    }
    if arcs.is_empty() {
        return None;
    }
    Some(
        arcs.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn cert(dn: &[(DnType, &str)]) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["client".to_string()]).expect("params");
        let mut name = DistinguishedName::new();
        for (t, v) in dn {
            name.push(t.clone(), *v);
        }
        params.distinguished_name = name;
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn subject_in_rfc2253_order_and_escaping() {
        type Case<'a> = (&'a [(DnType, &'a str)], &'a str);
        let cases: &[Case] = &[
            (&[(DnType::CommonName, "alice")], "CN=alice"),
            (
                &[
                    (DnType::CountryName, "US"),
                    (DnType::OrganizationName, "Acme"),
                    (DnType::OrganizationalUnitName, "eng"),
                    (DnType::CommonName, "alice"),
                ],
                "CN=alice,OU=eng,O=Acme,C=US",
            ),
            (
                &[
                    (DnType::OrganizationName, "Acme, Inc."),
                    (DnType::CommonName, " bob+1 "),
                ],
                "CN=\\ bob\\+1\\ ,O=Acme\\, Inc.",
            ),
            (
                &[
                    (
                        DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
                        "a@b",
                    ),
                    (DnType::CommonName, "c"),
                ],
                "CN=c,1.2.840.113549.1.9.1=#0c03614062",
            ),
        ];
        for (dn, expected) in cases {
            assert_eq!(subject_dn(&cert(dn)).as_deref(), Some(*expected), "{dn:?}");
        }
        assert_eq!(subject_dn(b"\x30\x03\x02\x01"), None);
        assert_eq!(subject_dn(&[]), None);
    }

    #[test]
    fn common_name_unescaped() {
        let c = cert(&[
            (DnType::OrganizationName, "Acme, Inc."),
            (DnType::CommonName, "dev+42, east"),
        ]);
        assert_eq!(subject_cn(&c).as_deref(), Some("dev+42, east"));
        assert_eq!(
            subject_cn(&cert(&[(DnType::OrganizationName, "Acme")])),
            None
        );
        assert_eq!(subject_cn(&[]), None);
    }

    fn check(rules: &[&str], dn: &str, expected: Option<&str>) {
        let rules: Vec<String> = rules.iter().map(|s| s.to_string()).collect();
        let m = PrincipalMapping::parse(&rules).expect("rules parse");
        assert_eq!(m.apply(dn).as_deref(), expected, "{rules:?} on {dn}");
    }

    #[test]
    fn mapping_rules() {
        let dn = "CN=Alice,OU=eng,O=Acme";
        check(&["DEFAULT"], dn, Some(dn));
        check(&["RULE:^CN=(.*?),.*$/$1/"], dn, Some("Alice"));
        check(&["RULE:^CN=(.*?),.*$/$1/L"], dn, Some("alice"));
        check(
            &["RULE:^CN=(.*?),OU=(.*?),.*$/$1@$2/U"],
            dn,
            Some("ALICE@ENG"),
        );
        check(&["RULE:^CN=(.*?),.*$/$1x/"], dn, Some("Alicex"));
        // Whole-DN match: a pattern that matches only a part does not apply.
        check(&["RULE:CN=(.*?),/$1/"], dn, None);
        check(&["RULE:^CN=(.*?),OU=ops,.*$/$1/", "DEFAULT"], dn, Some(dn));
        check(&["RULE:^CN=(.*?),OU=ops,.*$/$1/"], dn, None);
        check(&["RULE:^CN=(.*?)\\/(.*)$/$2/"], "CN=a/b", Some("b"));
    }

    #[test]
    fn bad_rules_are_named() {
        for (rules, needle) in [
            (vec![], "no rules"),
            (vec!["CN"], "expected DEFAULT or RULE"),
            (vec!["DEFAULT", "RULE:^CN=(.*$/$1/"], "rule 1"),
            (
                vec!["RULE:^CN=(.*)$/$1"],
                "expected RULE:pattern/replacement/",
            ),
            (vec!["RULE:^CN=(.*)$/$1/X"], "unknown flag"),
        ] {
            let rules: Vec<String> = rules.into_iter().map(String::from).collect();
            let err = PrincipalMapping::parse(&rules).expect_err("must fail");
            assert!(err.contains(needle), "{rules:?}: {err}");
        }
    }
}
