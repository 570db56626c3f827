//! memcached's ASCII authentication (`--auth-file FILE`, memcached's `-Y`): until a
//! connection has authenticated, its only command is a `set` whose data is `user password`,
//! checked against the file's `user:password` lines. Everything else is answered
//! `CLIENT_ERROR unauthenticated`, as memcached answers it.
//!
//! Where memcached would buffer whatever length the `set` line announces, a connection that
//! has not authenticated may announce at most [`MAX_TOKEN_BYTES`]: past that it is closed,
//! so a stranger cannot make the server hold a large buffer before proving anything.

use std::path::Path;

use bytes::BytesMut;

use crate::stats::Counts;

/// The most bytes a connection not authenticated yet may send without a line end
/// (memcached's limit).
const MAX_LINE_BYTES: usize = 2048;
/// The most data a not-yet-authenticated `set` may announce.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The users and passwords of an auth file.
#[derive(Clone, Debug)]
pub struct AuthFile {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl AuthFile {
    /// Reads `user:password` lines (a password may contain `:`); empty lines are skipped.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut entries = Vec::new();
        for line in text.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Err(format!("{}: a line is not `user:password`", path.display()));
            };
            entries.push((line[..colon].to_vec(), line[colon + 1..].to_vec()));
        }
        if entries.is_empty() {
            return Err(format!("{}: no `user:password` line", path.display()));
        }
        Ok(AuthFile { entries })
    }

    fn admits(&self, user: &[u8], password: &[u8]) -> bool {
        self.entries.iter().any(|(u, p)| u == user && p == password)
    }

    /// Whether a SASL `PLAIN` message (`authzid NUL authcid NUL password`, RFC 4616) names a
    /// user of the file with its password. An authorization identity, if given, must be the
    /// user itself: one user cannot act as another.
    pub fn admits_plain(&self, message: &[u8]) -> bool {
        let mut parts = message.split(|&b| b == 0);
        let (Some(authz), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        (authz.is_empty() || authz == user) && self.admits(user, password)
    }
}

/// What a connection that has not authenticated gets for what it sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A request is not whole yet.
    More,
    /// This reply; still not authenticated.
    Reply(&'static [u8]),
    /// Authenticated: `STORED` is the reply, and commands are served from now on.
    Authenticated,
    /// Close the connection (a line or a token too long).
    Close,
}

/// A connection's progress through authentication: whether the `set` line has been read
/// and how many bytes of data it announced.
#[derive(Debug, Default)]
pub struct Pending {
    data: Option<usize>,
}

/// memcached's tokens: runs of bytes between spaces.
fn tokens(line: &[u8]) -> Vec<&[u8]> {
    line.split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .collect()
}

/// memcached's `safe_strtoul` into a `uint32_t`: digits, then nothing but white space.
fn length(token: &[u8]) -> Option<usize> {
    let digits = token.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || !token[digits..].iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let n: u64 = std::str::from_utf8(&token[..digits]).ok()?.parse().ok()?;
    Some(n as u32 as usize)
}

impl Pending {
    /// Takes what it can of `input`.
    pub fn step(&mut self, input: &mut BytesMut, file: &AuthFile, counts: &mut Counts) -> Step {
        let len = match self.data {
            Some(len) => len,
            None => {
                let Some(nl) = input.iter().position(|&b| b == b'\n') else {
                    return match input.len() > MAX_LINE_BYTES {
                        true => Step::Close,
                        false => Step::More,
                    };
                };
                let line = input.split_to(nl + 1);
                let t = tokens(&line[..nl]);
                let announced = match t.as_slice() {
                    [b"set", _, _, _, size, ..] => length(size),
                    _ => None,
                };
                let Some(len) = announced else {
                    return Step::Reply(b"CLIENT_ERROR unauthenticated\r\n");
                };
                if len > MAX_TOKEN_BYTES {
                    return Step::Close;
                }
                self.data = Some(len + 2);
                len + 2
            }
        };
        if input.len() < len {
            return Step::More;
        }
        self.data = None;
        let data = input.split_to(len);
        if !data.ends_with(b"\r\n") {
            return Step::Reply(b"CLIENT_ERROR bad command line termination\r\n");
        }
        let t = tokens(&data[..len - 2]);
        let [user, password, ..] = t.as_slice() else {
            return Step::Reply(b"CLIENT_ERROR bad authentication token format\r\n");
        };
        counts.auth_cmds += 1;
        if file.admits(user, password) {
            Step::Authenticated
        } else {
            counts.auth_errors += 1;
            Step::Reply(b"CLIENT_ERROR authentication failure\r\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> AuthFile {
        AuthFile {
            entries: vec![(b"alice".to_vec(), b"se:cret".to_vec())],
        }
    }

    fn run(input: &[u8]) -> (Vec<Step>, usize) {
        let mut buf = BytesMut::from(input);
        let mut pending = Pending::default();
        let mut counts = Counts::default();
        let mut steps = Vec::new();
        loop {
            let step = pending.step(&mut buf, &file(), &mut counts);
            let done = matches!(step, Step::More | Step::Close | Step::Authenticated);
            steps.push(step);
            if done {
                return (steps, buf.len());
            }
        }
    }

    #[test]
    fn only_a_set_with_the_right_user_and_password_authenticates() {
        let (steps, left) = run(b"get a\r\nset x 0 0 13\r\nalice se:cret\r\nget a\r\n");
        assert_eq!(
            steps,
            [
                Step::Reply(b"CLIENT_ERROR unauthenticated\r\n"),
                Step::Authenticated
            ]
        );
        assert_eq!(
            left,
            b"get a\r\n".len(),
            "what follows is served as commands"
        );
        let (steps, _) = run(b"set x 0 0 11\r\nalice wrong\r\n");
        assert_eq!(
            steps[0],
            Step::Reply(b"CLIENT_ERROR authentication failure\r\n")
        );
        let (steps, _) = run(b"set x 0 0 5\r\nalice\r\n");
        assert_eq!(
            steps[0],
            Step::Reply(b"CLIENT_ERROR bad authentication token format\r\n")
        );
        let (steps, _) = run(b"set x 0 0 2\r\nabcd\r\n");
        assert_eq!(
            steps[0],
            Step::Reply(b"CLIENT_ERROR bad command line termination\r\n")
        );
    }

    #[test]
    fn a_partial_request_waits_and_an_oversized_one_closes() {
        let (steps, _) = run(b"set x 0 0 13\r\nalice");
        assert_eq!(steps, [Step::More]);
        let (steps, _) = run(&[b'x'; 3000]);
        assert_eq!(steps, [Step::Close]);
        let (steps, _) = run(b"set x 0 0 100000\r\n");
        assert_eq!(steps, [Step::Close]);
    }
}
