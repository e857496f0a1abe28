//! Cgroup path patterns, as written in a rule's `cgroup = "..."`.
//!
//! A pattern is an absolute path relative to the cgroup2 mount ("/" is the
//! root cgroup), made of path elements separated by "/":
//!
//! * a literal name matches exactly that name (`postgresql.service`);
//! * `*` inside an element matches any run of characters within that one
//!   element, so `*` alone is "exactly one path element" and
//!   `app-*.scope` matches `app-firefox.scope`;
//! * `**` as a whole element matches any number of path elements, including
//!   zero: `/a/**/b` matches `/a/b` and `/a/x/y/b`; `/batch/**` matches
//!   `/batch` itself and everything below it; `/**` matches every cgroup.
//!
//! Every other character is literal, including `?`, `[`, `{` and `\`:
//! systemd escapes unit names as `\x2d`, and such names must be writable
//! verbatim. A trailing "/" is ignored (`/a/` is `/a`). The pattern "/"
//! matches the root cgroup only.
//!
//! Paths given to [`CgroupPattern::matches`] use the same form: "/" for the
//! root, "/a/b" below it (a trailing "/" is ignored).

use std::fmt;

/// Why a pattern was rejected. The messages say how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("cgroup pattern is empty; use \"/\" for the root cgroup or \"/**\" for every cgroup")]
    Empty,
    #[error(
        "cgroup pattern \"{0}\" must start with \"/\" (it is a path below the cgroup2 mount, \
         e.g. \"/system.slice/foo.service\")"
    )]
    NotAbsolute(String),
    #[error("cgroup pattern \"{0}\" has an empty path element (\"//\")")]
    EmptyElement(String),
    #[error("cgroup pattern \"{0}\" has a \".\" or \"..\" element; write the path out in full")]
    DotElement(String),
    #[error(
        "cgroup pattern \"{0}\": \"**\" must be a whole path element (as in \"/a/**/b\"); \
         use a single \"*\" to match within a name"
    )]
    RecursiveInsideElement(String),
    #[error("cgroup pattern \"{0}\" contains a control character")]
    ControlCharacter(String),
}

/// One path element of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Element {
    /// `**`: any number of elements, including none.
    AnyDepth,
    /// A name, possibly with `*` wildcards: the literal parts between them.
    /// `["app-", ".scope"]` is `app-*.scope`; `["x"]` is the literal `x`.
    Name(Vec<String>),
}

/// A parsed, normalised cgroup path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPattern {
    /// Normalised text: no trailing "/", "/" for the root.
    text: String,
    elements: Vec<Element>,
}

impl CgroupPattern {
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::Empty);
        }
        if !pattern.starts_with('/') {
            return Err(PatternError::NotAbsolute(pattern.to_owned()));
        }
        if pattern.chars().any(char::is_control) {
            return Err(PatternError::ControlCharacter(
                pattern.escape_debug().to_string(),
            ));
        }
        let body = pattern.trim_end_matches('/');
        let mut elements = Vec::new();
        if !body.is_empty() {
            for elem in body[1..].split('/') {
                if elem.is_empty() {
                    return Err(PatternError::EmptyElement(pattern.to_owned()));
                }
                if elem == "." || elem == ".." {
                    return Err(PatternError::DotElement(pattern.to_owned()));
                }
                if elem == "**" {
                    // "/a/**/**/b" means the same as "/a/**/b".
                    if elements.last() != Some(&Element::AnyDepth) {
                        elements.push(Element::AnyDepth);
                    }
                    continue;
                }
                if elem.contains("**") {
                    return Err(PatternError::RecursiveInsideElement(pattern.to_owned()));
                }
                elements.push(Element::Name(elem.split('*').map(str::to_owned).collect()));
            }
        }
        let text = if body.is_empty() {
            "/".to_owned()
        } else {
            body.to_owned()
        };
        Ok(CgroupPattern { text, elements })
    }

    /// The normalised pattern text (trailing "/" removed).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when the pattern has no wildcard: it names exactly one cgroup.
    pub fn is_literal(&self) -> bool {
        self.elements
            .iter()
            .all(|e| matches!(e, Element::Name(parts) if parts.len() == 1))
    }

    /// Does this pattern match the cgroup at `path` ("/" or "/a/b")?
    pub fn matches(&self, path: &str) -> bool {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        match_elements(&self.elements, &segments, &mut 0)
    }
}

/// Which of the cgroups that may ever appear below a cgroup a pattern
/// matches (any depth, any names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Below {
    NoPath,
    EveryPath,
    /// Some and not others, or not provably every one (`/a/*` below `/a`
    /// matches the children and none of the grandchildren).
    SomePaths,
}

impl CgroupPattern {
    /// What this pattern matches among the strict descendants of `path`.
    /// The elements run over `path`'s segments as an NFA: the states left
    /// are the element suffixes a descendant's own segments must match.
    pub fn below(&self, path: &str) -> Below {
        let n = self.elements.len();
        let close = |states: &mut [bool]| {
            // `**` may match nothing: the element after it is reachable too.
            for i in 0..n {
                if states[i] && self.elements[i] == Element::AnyDepth {
                    states[i + 1] = true;
                }
            }
        };
        let mut states = vec![false; n + 1];
        let mut next = vec![false; n + 1];
        states[0] = true;
        close(&mut states);
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            next.fill(false);
            for i in (0..n).filter(|&i| states[i]) {
                match &self.elements[i] {
                    Element::AnyDepth => next[i] = true,
                    Element::Name(parts) if match_name(parts, segment) => next[i + 1] = true,
                    Element::Name(_) => {}
                }
            }
            close(&mut next);
            std::mem::swap(&mut states, &mut next);
            if !states.contains(&true) {
                return Below::NoPath;
            }
        }
        let any_name = |e: &Element| matches!(e, Element::Name(p) if p.len() == 2 && p.iter().all(String::is_empty));
        let matches_every_path = |suffix: &[Element]| {
            suffix
                .iter()
                .all(|e| *e == Element::AnyDepth || any_name(e))
                && suffix.iter().filter(|e| any_name(e)).count() <= 1
                && suffix.contains(&Element::AnyDepth)
        };
        // Every element matches some name, so any suffix left matches a descendant.
        let mut reachable = (0..n).filter(|&i| states[i]).map(|i| &self.elements[i..]);
        match reachable.next() {
            None => Below::NoPath,
            Some(first) if matches_every_path(first) => Below::EveryPath,
            Some(_) if reachable.any(matches_every_path) => Below::EveryPath,
            Some(_) => Below::SomePaths,
        }
    }
}

impl fmt::Display for CgroupPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Do `elements` match all of `segments`? Dynamic programming over
/// (element, segment) positions: `next[j]` says whether the elements after
/// the current one match `segments[j..]`. Each pair is decided once, so a
/// match costs at most (elements + 1) x (segments + 1) steps whatever the
/// number of `**`; trying every split of the path for every `**` (a
/// backtracking matcher) is exponential in their number when the path does
/// not match. `steps` counts the pairs decided (tests bound it).
fn match_elements(elements: &[Element], segments: &[&str], steps: &mut u64) -> bool {
    let n = segments.len();
    // No elements left: only the empty rest of the path matches.
    let mut next: Vec<bool> = (0..=n).map(|j| j == n).collect();
    let mut cur = vec![false; n + 1];
    for element in elements.iter().rev() {
        for j in (0..=n).rev() {
            *steps += 1;
            cur[j] = match element {
                // Match nothing here, or swallow segment j and stay on `**`.
                Element::AnyDepth => next[j] || (j < n && cur[j + 1]),
                Element::Name(parts) => j < n && next[j + 1] && match_name(parts, segments[j]),
            };
        }
        std::mem::swap(&mut next, &mut cur);
    }
    next[0]
}

/// Match one element: `parts` are the literal pieces between `*`s.
fn match_name(parts: &[String], name: &str) -> bool {
    let (first, rest) = match parts.split_first() {
        Some(x) => x,
        None => return name.is_empty(),
    };
    if rest.is_empty() {
        return name == first;
    }
    let Some(mut remaining) = name.strip_prefix(first.as_str()) else {
        return false;
    };
    let (last, middle) = rest.split_last().expect("rest is not empty");
    // Leftmost placement of each middle piece is optimal for `*`-only globs.
    for piece in middle {
        match remaining.find(piece.as_str()) {
            Some(at) => remaining = &remaining[at + piece.len()..],
            None => return false,
        }
    }
    remaining.ends_with(last.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, path: &str) -> bool {
        CgroupPattern::parse(pattern).unwrap().matches(path)
    }

    #[test]
    fn matching_table() {
        #[rustfmt::skip]
        let table: &[(&str, &str, bool)] = &[
            // literal
            ("/demo/db", "/demo/db", true),
            ("/demo/db", "/demo/db/child", false),
            ("/demo/db", "/demo", false),
            ("/demo/db", "/demo/dbx", false),
            ("/demo/db", "/", false),
            // root
            ("/", "/", true),
            ("/", "/a", false),
            // `*` is exactly one element
            ("/*", "/a", true),
            ("/*", "/", false),
            ("/*", "/a/b", false),
            ("/demo/*", "/demo/web", true),
            ("/demo/*", "/demo", false),
            ("/demo/*", "/demo/web/x", false),
            ("/*/web", "/demo/web", true),
            ("/*/web", "/demo/x/web", false),
            // `*` inside an element
            ("/user.slice/app-*.scope", "/user.slice/app-firefox.scope", true),
            ("/user.slice/app-*.scope", "/user.slice/app-.scope", true),
            ("/user.slice/app-*.scope", "/user.slice/app-x.service", false),
            ("/user.slice/app-*.scope", "/user.slice/app-a/b.scope", false),
            ("/*.service", "/foo.service", true),
            ("/*.service", "/foo.service.d", false),
            ("/a*b*c", "/abc", true),
            ("/a*b*c", "/axxbyyc", true),
            ("/a*b*c", "/acb", false),
            ("/ab*ba", "/aba", false),
            ("/ab*ba", "/abba", true),
            // `**` is any depth, including zero
            ("/demo/batch/**", "/demo/batch", true),
            ("/demo/batch/**", "/demo/batch/job1", true),
            ("/demo/batch/**", "/demo/batch/job1/step", true),
            ("/demo/batch/**", "/demo/batchx", false),
            ("/demo/batch/**", "/demo", false),
            ("/**", "/", true),
            ("/**", "/a/b/c", true),
            ("/a/**/b", "/a/b", true),
            ("/a/**/b", "/a/x/b", true),
            ("/a/**/b", "/a/x/y/b", true),
            ("/a/**/b", "/a/x/y/c", false),
            ("/a/**/b", "/a/b/c", false),
            ("/**/*.service", "/system.slice/foo.service", true),
            ("/**/*.service", "/foo.service", true),
            ("/**/*.service", "/system.slice", false),
            ("/a/**/**/b", "/a/b", true),
            ("/**/b/**", "/x/b/y/z", true),
            ("/**/b/**", "/x/c/y/z", false),
            // trailing slashes on either side are ignored
            ("/demo/web/", "/demo/web", true),
            ("/demo/web", "/demo/web/", true),
            ("/demo/*/", "/demo/web", true),
            // other glob characters are literal (systemd escapes with \x2d)
            (r"/system.slice/systemd-fsck@dev-disk-by\x2duuid.service",
             r"/system.slice/systemd-fsck@dev-disk-by\x2duuid.service", true),
            ("/a?", "/ab", false),
            ("/a?", "/a?", true),
            ("/[ab]", "/a", false),
            ("/{a,b}", "/{a,b}", true),
        ];
        for &(pattern, path, expected) in table {
            assert_eq!(
                m(pattern, path),
                expected,
                "pattern {pattern:?} vs path {path:?}"
            );
        }
    }

    /// The backtracking matcher this module used before, kept as the
    /// obviously-correct reference: it tries every split of the path for
    /// every `**`, and every split of a name for every `*`. `steps` counts
    /// its calls.
    fn reference_match(elements: &[Element], segments: &[&str], steps: &mut u64) -> bool {
        *steps += 1;
        match elements.split_first() {
            None => segments.is_empty(),
            Some((Element::AnyDepth, rest)) => {
                (0..=segments.len()).any(|skip| reference_match(rest, &segments[skip..], steps))
            }
            Some((Element::Name(parts), rest)) => match segments.split_first() {
                Some((seg, seg_rest)) => {
                    reference_name(parts.join("*").as_bytes(), seg.as_bytes())
                        && reference_match(rest, seg_rest, steps)
                }
                None => false,
            },
        }
    }

    /// `*` matches any run of bytes; everything else itself.
    fn reference_name(pattern: &[u8], name: &[u8]) -> bool {
        match pattern.split_first() {
            None => name.is_empty(),
            Some((b'*', rest)) => (0..=name.len()).any(|i| reference_name(rest, &name[i..])),
            Some((c, rest)) => name.first() == Some(c) && reference_name(rest, &name[1..]),
        }
    }

    proptest::proptest! {
        /// On small patterns and paths over a tiny alphabet (so that
        /// matches are common), the matcher agrees with the reference, and
        /// within its step bound.
        #[test]
        fn agrees_with_the_reference_on_generated_inputs(
            elements in proptest::collection::vec("\\*\\*|[ab*]{1,4}", 0..7),
            segments in proptest::collection::vec("[ab]{1,3}", 0..9),
        ) {
            // "*" runs inside a name are one "*"; "**" inside one is an error.
            let elements: Vec<String> = elements
                .into_iter()
                .map(|e| if e == "**" { e } else { e.replace("**", "*").replace("**", "*") })
                .collect();
            let pattern = CgroupPattern::parse(&format!("/{}", elements.join("/"))).unwrap();
            let path = format!("/{}", segments.join("/"));
            let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
            let (mut new, mut old) = (0, 0);
            let got = match_elements(&pattern.elements, &segs, &mut new);
            let want = reference_match(&pattern.elements, &segs, &mut old);
            proptest::prop_assert_eq!(got, want, "{} vs {}", pattern, path);
            proptest::prop_assert_eq!(pattern.matches(&path), want);
            let bound = (pattern.elements.len() as u64 + 1) * (segs.len() as u64 + 1);
            proptest::prop_assert!(new <= bound);
        }
    }

    proptest::proptest! {
        /// `below` against every descendant path up to four levels deep
        /// over the names that can tell the elements apart: `NoPath` matches
        /// none of them, `EveryPath` all of them.
        #[test]
        fn below_agrees_with_the_descendants(
            elements in proptest::collection::vec("\\*\\*|\\*|[ab*]{1,2}", 0..6),
            segments in proptest::collection::vec("[ab]{1,2}", 0..4),
        ) {
            let elements: Vec<String> = elements
                .into_iter()
                .map(|e| if e == "**" { e } else { e.replace("**", "*") })
                .collect();
            let pattern = CgroupPattern::parse(&format!("/{}", elements.join("/"))).unwrap();
            let path = format!("/{}", segments.join("/"));
            let names = ["a", "b", "ab", "ba", "c"];
            let mut level: Vec<String> = vec![path.trim_end_matches('/').to_owned()];
            let (mut matched, mut total) = (0, 0);
            for _ in 0..4 {
                level = level
                    .iter()
                    .flat_map(|p| names.iter().map(move |n| format!("{p}/{n}")))
                    .collect();
                total += level.len();
                matched += level.iter().filter(|p| pattern.matches(p)).count();
            }
            match pattern.below(&path) {
                Below::NoPath => proptest::prop_assert_eq!(matched, 0, "{} below {}", pattern, path),
                Below::EveryPath => proptest::prop_assert_eq!(matched, total, "{} below {}", pattern, path),
                Below::SomePaths => {}
            }
        }
    }

    #[test]
    fn below_table() {
        use Below::*;
        for (pattern, path, expected) in [
            ("/batch/**", "/batch", EveryPath),
            ("/batch/**", "/batch/j1", EveryPath),
            ("/batch/**", "/", SomePaths),
            ("/batch/**", "/web", NoPath),
            ("/batch/*/**", "/batch", EveryPath),
            ("/batch/**/*", "/batch", EveryPath),
            // Children only, not grandchildren.
            ("/batch/*", "/batch", SomePaths),
            ("/batch/*", "/batch/j1", NoPath),
            ("/batch/*/*/**", "/batch", SomePaths),
            ("/**/*.scope", "/user.slice", SomePaths),
            ("/**", "/", EveryPath),
            ("/", "/", NoPath),
            ("/a", "/", SomePaths),
            ("/a", "/a", NoPath),
            ("/**/a", "/a", SomePaths),
        ] {
            let p = CgroupPattern::parse(pattern).unwrap();
            assert_eq!(p.below(path), expected, "{pattern} below {path}");
        }
    }

    /// (matched, steps) of the matcher and of the reference.
    fn both(pattern: &str, path: &str) -> ((bool, u64), (bool, u64)) {
        let p = CgroupPattern::parse(pattern).unwrap();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (mut new, mut old) = (0, 0);
        let got = match_elements(&p.elements, &segments, &mut new);
        let want = reference_match(&p.elements, &segments, &mut old);
        ((got, new), (want, old))
    }

    #[test]
    fn many_any_depths_against_a_deep_path_stay_polynomial() {
        // Seven "**" and a final "b" that never matches: a backtracking
        // matcher tries every way to spread 200 segments over them.
        let pattern = CgroupPattern::parse("/**/a/**/a/**/a/**/a/**/a/**/a/**/b").unwrap();
        assert_eq!(pattern.elements.len(), 14);
        let deep = "/a".repeat(200);
        let segments: Vec<&str> = deep.split('/').filter(|s| !s.is_empty()).collect();
        let mut steps = 0;
        assert!(!match_elements(&pattern.elements, &segments, &mut steps));
        // One step per (element, position) pair, by construction.
        assert_eq!(steps, 14 * 201);
        // The same pattern ending in "a" matches, at the same cost.
        let ok = CgroupPattern::parse("/**/a/**/a/**/a/**/a/**/a/**/a/**/a").unwrap();
        let mut steps = 0;
        assert!(match_elements(&ok.elements, &segments, &mut steps));
        assert_eq!(steps, 14 * 201);
        assert!(ok.matches(&deep));

        // What it replaced: already at 24 segments the backtracking
        // matcher needs over a hundred times the work, and it grows with
        // the depth to the power of the number of "**".
        let ((got, new), (want, old)) =
            both("/**/a/**/a/**/a/**/a/**/a/**/a/**/b", &"/a".repeat(24));
        assert_eq!((got, want), (false, false));
        assert_eq!(new, 14 * 25);
        assert!(old > 100 * new, "reference took {old} steps, matcher {new}");
    }

    #[test]
    fn agrees_with_the_reference_on_the_table_cases() {
        for (pattern, path) in [
            ("/a/**/b", "/a/x/y/b"),
            ("/**/b/**", "/x/b/y/z"),
            ("/**/*.service", "/system.slice/foo.service"),
            ("/**", "/"),
            ("/", "/a"),
            ("/a*b*c", "/axxbyyc"),
        ] {
            let ((got, _), (want, _)) = both(pattern, path);
            assert_eq!(got, want, "{pattern} vs {path}");
        }
    }

    #[test]
    fn normalisation_and_literals() {
        let p = CgroupPattern::parse("/demo/web/").unwrap();
        assert_eq!(p.as_str(), "/demo/web");
        assert!(p.is_literal());
        assert_eq!(CgroupPattern::parse("/").unwrap().as_str(), "/");
        assert_eq!(CgroupPattern::parse("///").unwrap().as_str(), "/");
        assert!(CgroupPattern::parse("/").unwrap().is_literal());
        assert!(!CgroupPattern::parse("/a/*").unwrap().is_literal());
        assert!(!CgroupPattern::parse("/a/**").unwrap().is_literal());
        assert!(!CgroupPattern::parse("/app-*.scope").unwrap().is_literal());
    }

    #[test]
    fn bad_patterns() {
        use PatternError::*;
        let cases: &[(&str, PatternError)] = &[
            ("", Empty),
            ("demo/db", NotAbsolute("demo/db".into())),
            ("*/db", NotAbsolute("*/db".into())),
            ("/demo//db", EmptyElement("/demo//db".into())),
            ("/demo/../db", DotElement("/demo/../db".into())),
            ("/./db", DotElement("/./db".into())),
            ("/demo/a**", RecursiveInsideElement("/demo/a**".into())),
            ("/***", RecursiveInsideElement("/***".into())),
            ("/a\nb", ControlCharacter("/a\\nb".into())),
        ];
        for (pattern, expected) in cases {
            assert_eq!(
                CgroupPattern::parse(pattern).as_ref(),
                Err(expected),
                "{pattern:?}"
            );
        }
        assert!(NotAbsolute("x".into())
            .to_string()
            .contains("must start with \"/\""));
    }
}
