//! SQL text -> one sqlparser `Statement`.
//!
//! Dialect: sqlparser's `GenericDialect` (ANSI-ish, accepts `::` casts, `ILIKE`,
//! `INTERVAL '5 minutes'`, double-quoted identifiers). One zeptodb extension is handled at
//! the token level: `ASOF JOIN t ON ...` (kdb+/DuckDB style). sqlparser only knows
//! Snowflake's `ASOF JOIN ... MATCH_CONDITION(...)`, so the `ASOF` token is replaced by
//! `SEMI` (same length, so error positions stay right) and `SEMI JOIN` is read back as an
//! ASOF join by the binder. A user-written `SEMI`/`ANTI` join is refused.

use sqlparser::ast::Statement;
use sqlparser::dialect::GenericDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer, Word};

use crate::error::{unsupported, Error, Result};

/// Parse exactly one statement (a trailing `;` is allowed).
pub(crate) fn parse_one(sql: &str) -> Result<Statement> {
    let dialect = GenericDialect {};
    let mut tokens = Tokenizer::new(&dialect, sql)
        .with_unescape(true)
        .tokenize_with_location()
        .map_err(|e| Error::Syntax(e.to_string()))?;
    let mut prev_asof = false;
    for i in 0..tokens.len() {
        let (is_kw, kw) = match &tokens[i].token {
            Token::Word(w) if w.quote_style.is_none() => (true, w.keyword),
            _ => (false, Keyword::NoKeyword),
        };
        if !is_kw {
            if !matches!(tokens[i].token, Token::Whitespace(_)) {
                prev_asof = false;
            }
            continue;
        }
        match kw {
            Keyword::SEMI | Keyword::ANTI => {
                let loc = tokens[i].span.start;
                return Err(unsupported(format!("SEMI/ANTI JOIN{loc}")));
            }
            Keyword::ASOF => {
                prev_asof = true;
                continue;
            }
            Keyword::JOIN if prev_asof => {
                // Find the ASOF word before this JOIN and turn it into SEMI.
                if let Some(j) = (0..i).rev().find(
                    |j| matches!(&tokens[*j].token, Token::Word(w) if w.keyword == Keyword::ASOF),
                ) {
                    tokens[j].token = Token::Word(Word {
                        value: "SEMI".into(),
                        quote_style: None,
                        keyword: Keyword::SEMI,
                    });
                }
            }
            _ => {}
        }
        prev_asof = false;
    }
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens);
    let mut stmts = parser.parse_statements().map_err(|e| {
        let msg = e.to_string();
        if msg.contains("Line:") {
            Error::Syntax(msg)
        } else {
            // sqlparser gives no position for errors at the end of the input.
            let line = sql.lines().count().max(1);
            let col = sql.lines().last().map_or(0, |l| l.chars().count()) + 1;
            Error::Syntax(format!(
                "{msg} at end of input, Line: {line}, Column: {col}"
            ))
        }
    })?;
    match stmts.len() {
        1 => stmts
            .pop()
            .ok_or_else(|| Error::Syntax("empty statement".into())),
        0 => Err(Error::Syntax("empty statement".into())),
        n => Err(unsupported(format!(
            "{n} statements in one request; send one at a time"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asof_is_rewritten_and_errors_have_positions() {
        let s = parse_one("SELECT * FROM t ASOF JOIN q ON t.s = q.s AND t.ts >= q.ts").unwrap();
        assert!(s.to_string().contains("SEMI JOIN"));
        let e = parse_one("SELECT * FROM t SEMI JOIN q ON true").unwrap_err();
        assert!(e.to_string().contains("SEMI"), "{e}");
        let e = parse_one("SELECT a FROM\n  WHERE x").unwrap_err();
        assert!(e.to_string().contains("Line: 2"), "{e}");
        assert!(parse_one("SELECT 1; SELECT 2").is_err());
        assert!(parse_one("SELECT 1;").is_ok());
    }
}
