//! The xl.cfg syntax (xl.cfg(5), libxlu's parser): `KEY = VALUE` or
//! `KEY += VALUE` statements ended by a newline or `;`, values that are
//! strings ("…" with C escapes, or '…'), numbers (decimal or 0x…), or lists
//! `[ v, v, … ]` that may span lines (a trailing comma is fine); `#`
//! comments. Errors name the file and line.

use std::path::Path;

/// A value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A string.
    Str(String),
    /// A number.
    Num(i64),
    /// A list of strings and numbers.
    List(Vec<Value>),
}

/// One `KEY = VALUE` with the line it is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The key.
    pub key: String,
    /// The value (`+=` already appended).
    pub value: Value,
    /// 1-based line of the key.
    pub line: usize,
}

/// A syntax error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}: {msg}")]
pub struct SyntaxError {
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

struct Lexer<'a> {
    s: &'a [u8],
    at: usize,
    line: usize,
    file: &'a str,
}

impl Lexer<'_> {
    fn err(&self, msg: impl Into<String>) -> SyntaxError {
        SyntaxError { file: self.file.into(), line: self.line, msg: msg.into() }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    /// Skips blanks and comments; newlines too when `newlines`.
    fn skip(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' | b'\r' => self.at += 1,
                b'\n' if newlines => {
                    self.line += 1;
                    self.at += 1;
                }
                b'#' => {
                    while self.peek().is_some_and(|c| c != b'\n') {
                        self.at += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn ident(&mut self) -> Option<String> {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.') {
            self.at += 1;
        }
        (self.at > start).then(|| String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    fn string(&mut self, quote: u8) -> Result<String, SyntaxError> {
        self.at += 1;
        let mut out = Vec::new();
        loop {
            let c = self.peek().ok_or_else(|| self.err("unterminated string"))?;
            self.at += 1;
            match c {
                b'\n' => return Err(self.err("unterminated string")),
                c if c == quote => break,
                b'\\' if quote == b'"' => {
                    let e = self.peek().ok_or_else(|| self.err("unterminated string"))?;
                    self.at += 1;
                    out.push(match e {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        b'\\' => b'\\',
                        b'"' => b'"',
                        b'\'' => b'\'',
                        other => return Err(self.err(format!("unknown escape \\{}", other as char))),
                    });
                }
                c => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| self.err("string is not UTF-8"))
    }

    fn number(&mut self) -> Result<i64, SyntaxError> {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric()) {
            self.at += 1;
        }
        let t = String::from_utf8_lossy(&self.s[start..self.at]).into_owned();
        let v = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(h) => i64::from_str_radix(h, 16),
            None => t.parse(),
        };
        v.map_err(|_| self.err(format!("bad number {t:?}")))
    }

    fn scalar(&mut self) -> Result<Value, SyntaxError> {
        match self.peek() {
            Some(q @ (b'"' | b'\'')) => Ok(Value::Str(self.string(q)?)),
            Some(c) if c.is_ascii_digit() || c == b'-' => {
                if c == b'-' {
                    self.at += 1;
                    return Ok(Value::Num(-self.number()?));
                }
                Ok(Value::Num(self.number()?))
            }
            Some(c) => Err(self.err(format!("expected a value, found {:?}", c as char))),
            None => Err(self.err("expected a value at the end of the file")),
        }
    }

    fn value(&mut self) -> Result<Value, SyntaxError> {
        if self.peek() != Some(b'[') {
            return self.scalar();
        }
        self.at += 1;
        let mut items = Vec::new();
        loop {
            self.skip(true);
            match self.peek() {
                Some(b']') => {
                    self.at += 1;
                    return Ok(Value::List(items));
                }
                None => return Err(self.err("unterminated list")),
                _ => {}
            }
            items.push(self.scalar()?);
            self.skip(true);
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {}
                Some(c) => return Err(self.err(format!("expected ',' or ']' in a list, found {:?}", c as char))),
                None => return Err(self.err("unterminated list")),
            }
        }
    }
}

/// Parses a config's text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Vec<Setting>, SyntaxError> {
    let mut lx = Lexer { s: text.as_bytes(), at: 0, line: 1, file };
    let mut out: Vec<Setting> = Vec::new();
    loop {
        lx.skip(true);
        while lx.peek() == Some(b';') {
            lx.at += 1;
            lx.skip(true);
        }
        if lx.peek().is_none() {
            return Ok(out);
        }
        let line = lx.line;
        let key = lx.ident().ok_or_else(|| lx.err(format!("expected a setting name, found {:?}", lx.peek().map_or(' ', |c| c as char))))?;
        lx.skip(false);
        let append = if lx.s[lx.at..].starts_with(b"+=") {
            lx.at += 2;
            true
        } else if lx.peek() == Some(b'=') {
            lx.at += 1;
            false
        } else {
            return Err(lx.err(format!("expected '=' after {key}")));
        };
        lx.skip(false);
        let value = lx.value()?;
        lx.skip(false);
        match lx.peek() {
            None | Some(b'\n') | Some(b';') => {}
            Some(c) => return Err(lx.err(format!("unexpected {:?} after the value of {key}", c as char))),
        }
        if append {
            match out.iter_mut().rev().find(|s| s.key == key) {
                Some(Setting { value: Value::List(items), .. }) => match value {
                    Value::List(more) => items.extend(more),
                    v => items.push(v),
                },
                Some(Setting { value: Value::Str(s), .. }) => match value {
                    Value::Str(more) => s.push_str(&more),
                    _ => return Err(SyntaxError { file: file.into(), line, msg: format!("cannot append a non-string to {key}") }),
                },
                _ => return Err(SyntaxError { file: file.into(), line, msg: format!("{key} += before {key} = (or on a number)") }),
            }
            continue;
        }
        out.retain(|s| s.key != key);
        out.push(Setting { key, value, line });
    }
}

/// Reads and parses a config file.
pub fn parse_file(path: &Path) -> anyhow::Result<Vec<Setting>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(parse(&text, &path.display().to_string())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typical_config() {
        let cfg = r#"
# A PVH guest.
name = "web1"
type = 'pvh'
memory = 512 ; vcpus = 2
kernel = "/boot/vmlinuz"
extra = "console=hvc0 \"quoted\""
disk = [ 'format=raw, vdev=xvda, access=rw, target=/img/root.img',
         "phy:/dev/vg/data,xvdb,w",   # trailing comma next
       ]
vif = [ "mac=00:16:3e:00:00:01,bridge=br0" ]
max_grant_frames = 0x40
disk += [ "/img/c.iso,raw,xvdc,ro" ]
"#;
        let s = parse(cfg, "web1.cfg").unwrap();
        let get = |k: &str| s.iter().find(|x| x.key == k).map(|x| x.value.clone());
        assert_eq!(get("name"), Some(Value::Str("web1".into())));
        assert_eq!(get("memory"), Some(Value::Num(512)));
        assert_eq!(get("vcpus"), Some(Value::Num(2)));
        assert_eq!(get("extra"), Some(Value::Str("console=hvc0 \"quoted\"".into())));
        assert_eq!(get("max_grant_frames"), Some(Value::Num(64)));
        let Some(Value::List(d)) = get("disk") else { panic!() };
        assert_eq!(d.len(), 3);
        assert_eq!(s.iter().find(|x| x.key == "disk").unwrap().line, 8);
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = |t: &str| parse(t, "g.cfg").unwrap_err();
        assert_eq!(e("name = \"x\"\nmemory 5\n"), SyntaxError { file: "g.cfg".into(), line: 2, msg: "expected '=' after memory".into() });
        assert_eq!(e("a = \"open\n").line, 1);
        assert_eq!(e("a = [1, 2\n\n").msg, "unterminated list");
        assert_eq!(e("a = 12x\n").msg, "bad number \"12x\"");
        assert_eq!(e("a = 1 2\n").msg, "unexpected '2' after the value of a");
        assert_eq!(e("\n\n= 3").line, 3);
        assert_eq!(e("a += 1").msg, "a += before a = (or on a number)");
        assert_eq!(e("a = \"\\q\"").msg, "unknown escape \\q");
        assert_eq!(e("a = [ [1] ]").msg, "expected a value, found '['");
    }
}
