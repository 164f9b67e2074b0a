//! The few things the server reads in SQL text before handing it to `zepto-sql`: a trailing
//! `FORMAT name` clause (stripped), and the `INSERT INTO t [(cols)] FORMAT name` header of a
//! bulk insert (whose data follows in the body). A small lexer that knows quotes and comments
//! does this, so `'... FORMAT CSV'` inside a string literal is never mistaken for a clause.
//! The server never builds SQL from request parameters.

/// A lexical token with its byte span.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A bare word: keyword, identifier or number.
    Word(String),
    /// A `"quoted"` or `` `quoted` `` identifier (unescaped).
    Quoted(String),
    /// A `'string literal'`.
    Str,
    /// Any other single byte.
    Punct(u8),
}

struct Lexer<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn new(s: &'a [u8]) -> Self {
        Lexer { s, pos: 0 }
    }

    fn skip_blank(&mut self) -> Result<(), String> {
        loop {
            match self.s.get(self.pos..) {
                Some([c, ..]) if c.is_ascii_whitespace() => self.pos += 1,
                Some([b'-', b'-', ..]) => {
                    while self.pos < self.s.len() && self.s[self.pos] != b'\n' {
                        self.pos += 1;
                    }
                }
                Some([b'/', b'*', ..]) => {
                    let start = self.pos;
                    self.pos += 2;
                    loop {
                        match self.s.get(self.pos..) {
                            Some([b'*', b'/', ..]) => {
                                self.pos += 2;
                                break;
                            }
                            Some([_, ..]) => self.pos += 1,
                            _ => return Err(format!("unterminated comment at byte {start}")),
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// The next token and its `[start, end)` span, or `None` at the end.
    fn next_token(&mut self) -> Result<Option<(Tok, usize, usize)>, String> {
        self.skip_blank()?;
        let start = self.pos;
        let Some(&c) = self.s.get(self.pos) else {
            return Ok(None);
        };
        let tok = if c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 {
            while let Some(&c) = self.s.get(self.pos) {
                if c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 {
                    self.pos += 1;
                } else {
                    break;
                }
            }
            Tok::Word(String::from_utf8_lossy(&self.s[start..self.pos]).into_owned())
        } else if c == b'\'' || c == b'"' || c == b'`' {
            self.pos += 1;
            let mut text = Vec::new();
            loop {
                match self.s.get(self.pos) {
                    None => return Err(format!("unterminated quote starting at byte {start}")),
                    Some(&q) if q == c => {
                        if self.s.get(self.pos + 1) == Some(&c) {
                            text.push(c);
                            self.pos += 2;
                        } else {
                            self.pos += 1;
                            break;
                        }
                    }
                    Some(b'\\') if c == b'\'' => {
                        // Backslash escapes inside string literals: skip the escaped byte.
                        self.pos += 2;
                    }
                    Some(&b) => {
                        text.push(b);
                        self.pos += 1;
                    }
                }
            }
            if c == b'\'' {
                Tok::Str
            } else {
                Tok::Quoted(String::from_utf8_lossy(&text).into_owned())
            }
        } else {
            self.pos += 1;
            Tok::Punct(c)
        };
        Ok(Some((tok, start, self.pos)))
    }
}

fn is_word(t: &Tok, w: &str) -> bool {
    matches!(t, Tok::Word(s) if s.eq_ignore_ascii_case(w))
}

/// Split `SELECT ... FORMAT CSV;` into `("SELECT ...", Some("CSV"))`.
/// SQL without a trailing FORMAT clause comes back unchanged (minus trailing `;`).
pub(crate) fn split_format(sql: &str) -> Result<(String, Option<String>), String> {
    let mut lx = Lexer::new(sql.as_bytes());
    let mut toks = Vec::new();
    while let Some(t) = lx.next_token()? {
        toks.push(t);
    }
    while matches!(toks.last(), Some((Tok::Punct(b';'), _, _))) {
        toks.pop();
    }
    let end = toks.last().map_or(0, |t| t.2);
    if toks.len() >= 3 {
        let (name, _, _) = &toks[toks.len() - 1];
        let (kw, kw_start, _) = &toks[toks.len() - 2];
        if is_word(kw, "FORMAT") {
            if let Tok::Word(name) = name {
                return Ok((sql[..*kw_start].trim_end().to_string(), Some(name.clone())));
            }
        }
    }
    Ok((sql[..end].trim().to_string(), None))
}

/// The header of a bulk insert: `INSERT INTO table [(c1, c2)] FORMAT name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InsertHeader {
    pub(crate) table: String,
    pub(crate) columns: Option<Vec<String>>,
    pub(crate) format: String,
    /// Byte offset in the input where the data starts (after the format name and the
    /// whitespace up to and including the first newline).
    pub(crate) data_offset: usize,
}

/// Recognise `INSERT INTO t [(cols)] FORMAT name` at the start of `input` (which may be
/// followed by binary data). `Ok(None)` when the input is something else (e.g.
/// `INSERT ... VALUES`, which goes to the SQL engine).
pub(crate) fn parse_insert_header(input: &[u8]) -> Result<Option<InsertHeader>, String> {
    let mut lx = Lexer::new(input);
    let next = |lx: &mut Lexer<'_>| lx.next_token();
    match next(&mut lx)? {
        Some((t, _, _)) if is_word(&t, "INSERT") => {}
        _ => return Ok(None),
    }
    match next(&mut lx)? {
        Some((t, _, _)) if is_word(&t, "INTO") => {}
        _ => return Ok(None),
    }
    let table = match next(&mut lx)? {
        Some((Tok::Word(w), _, _)) | Some((Tok::Quoted(w), _, _)) => w,
        _ => return Ok(None),
    };
    let mut columns = None;
    let mut tok = next(&mut lx)?;
    if matches!(tok, Some((Tok::Punct(b'('), _, _))) {
        let mut cols = Vec::new();
        loop {
            match next(&mut lx)? {
                Some((Tok::Word(w), _, _)) | Some((Tok::Quoted(w), _, _)) => cols.push(w),
                _ => return Err("bad column list in INSERT".into()),
            }
            match next(&mut lx)? {
                Some((Tok::Punct(b','), _, _)) => {}
                Some((Tok::Punct(b')'), _, _)) => break,
                _ => return Err("bad column list in INSERT".into()),
            }
        }
        columns = Some(cols);
        tok = next(&mut lx)?;
    }
    match tok {
        Some((t, _, _)) if is_word(&t, "FORMAT") => {}
        _ => return Ok(None),
    }
    let (format, end) = match next(&mut lx)? {
        Some((Tok::Word(w), _, end)) => (w, end),
        _ => return Err("FORMAT needs a format name".into()),
    };
    // Data starts after blanks up to and including the first newline.
    let mut off = end;
    while let Some(&c) = input.get(off) {
        match c {
            b' ' | b'\t' | b'\r' => off += 1,
            b'\n' => {
                off += 1;
                break;
            }
            _ => break,
        }
    }
    Ok(Some(InsertHeader {
        table,
        columns,
        format,
        data_offset: off,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_trailing_format() {
        assert_eq!(
            split_format("SELECT 1 FORMAT CSV").unwrap(),
            ("SELECT 1".to_string(), Some("CSV".to_string()))
        );
        assert_eq!(
            split_format("select a from t format JSONEachRow ;\n").unwrap(),
            (
                "select a from t".to_string(),
                Some("JSONEachRow".to_string())
            )
        );
        assert_eq!(
            split_format("SELECT 'x FORMAT CSV'").unwrap(),
            ("SELECT 'x FORMAT CSV'".to_string(), None)
        );
        assert_eq!(
            split_format("SELECT 1 -- FORMAT CSV").unwrap(),
            ("SELECT 1".to_string(), None)
        );
        assert_eq!(
            split_format("SELECT 1;").unwrap(),
            ("SELECT 1".to_string(), None)
        );
        assert!(split_format("SELECT 'oops").is_err());
    }

    #[test]
    fn insert_header() {
        let body = b"INSERT INTO trades FORMAT CSV\n1,2,3\n";
        let h = parse_insert_header(body).unwrap().unwrap();
        assert_eq!(h.table, "trades");
        assert_eq!(h.format, "CSV");
        assert_eq!(&body[h.data_offset..], b"1,2,3\n");

        let body = b"insert into \"t\" (ts, symbol) format Arrow\n\xff\xff\x00";
        let h = parse_insert_header(body).unwrap().unwrap();
        assert_eq!(h.table, "t");
        assert_eq!(
            h.columns,
            Some(vec!["ts".to_string(), "symbol".to_string()])
        );
        assert_eq!(&body[h.data_offset..], b"\xff\xff\x00");

        assert_eq!(
            parse_insert_header(b"INSERT INTO t VALUES (1)").unwrap(),
            None
        );
        assert_eq!(parse_insert_header(b"SELECT 1").unwrap(), None);
    }
}
