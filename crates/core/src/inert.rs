//! Host text made inert for our own output: names, comments and rule text read from the
//! host are data, so every control character in them is spelled as an escape (`\n`,
//! `\u{1b}`) before it is printed. A chain named "c\n[[gateway]]…" then stays on its line
//! of a TOML comment or a message, and an escape sequence never reaches the terminal.

/// `s` with every control character spelled as its escape.
pub fn inert(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_escapes() {
        assert_eq!(inert("c\n[[x]]\u{1b}[31m\t é"), "c\\n[[x]]\\u{1b}[31m\\t é");
    }
}
