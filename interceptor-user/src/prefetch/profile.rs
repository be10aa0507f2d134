//! The patent's "home" proxy: a profile file that names each user's home edge. Where
//! it names one, it wins over where the user was last seen.
//!
//! One user a line, `SERVER USER EDGE` separated by spaces or tabs: the mail server as
//! `IP:PORT`, the username as the client sends it, the edge's name. `#` starts a
//! comment.

use std::{collections::HashMap, io, net::SocketAddr, path::Path};

/// Largest profile file read.
const MAX_FILE: u64 = 256 << 20;

/// The users the profile file names, and whether this edge is their home.
#[derive(Debug, Default)]
pub struct Profile {
    home_here: HashMap<(SocketAddr, Vec<u8>), bool>,
}

/// Where a user's mail goes, by the profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Home {
    Here,
    Elsewhere,
    /// Not in the profile: where the user was last seen decides.
    Unknown,
}

impl Profile {
    /// Reads `path` for the edge named `edge`.
    pub fn load(path: &Path, edge: &str) -> io::Result<Self> {
        if std::fs::metadata(path)?.len() > MAX_FILE {
            return Err(io::Error::other("the profile file is larger than 256 MiB"));
        }
        let text = std::fs::read_to_string(path)?;
        Self::parse(&text, edge)
            .map_err(|line| io::Error::other(format!("line {line}: SERVER(IP:PORT) USER EDGE")))
    }

    /// The profile in `text` for `edge`; the error is the number of a bad line.
    pub fn parse(text: &str, edge: &str) -> Result<Self, usize> {
        let mut home_here = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [server, user, home] = fields[..] else {
                return Err(n + 1);
            };
            let server: SocketAddr = server.parse().map_err(|_| n + 1)?;
            home_here.insert((server, user.as_bytes().to_vec()), home == edge);
        }
        Ok(Self { home_here })
    }

    /// Where `user` of `server` has their home.
    pub fn home(&self, server: SocketAddr, user: &[u8]) -> Home {
        match self.home_here.get(&(server, user.to_vec())) {
            Some(true) => Home::Here,
            Some(false) => Home::Elsewhere,
            None => Home::Unknown,
        }
    }

    /// The users whose home is this edge.
    pub fn residents(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.home_here
            .iter()
            .filter(|(_, here)| **here)
            .map(|((server, user), _)| (*server, user.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_names_homes_here_and_elsewhere() {
        let text = "# server user edge\n203.0.113.2:110 alice edge-a\n\
                    203.0.113.2:110\tbob  edge-b # travels\n\n";
        let profile = Profile::parse(text, "edge-a").unwrap();
        let server = "203.0.113.2:110".parse().unwrap();
        assert_eq!(profile.home(server, b"alice"), Home::Here);
        assert_eq!(profile.home(server, b"bob"), Home::Elsewhere);
        assert_eq!(profile.home(server, b"carol"), Home::Unknown);
        assert_eq!(
            profile.residents().collect::<Vec<_>>(),
            [(server, &b"alice"[..])]
        );
        assert_eq!(
            Profile::parse("203.0.113.2 alice edge-a\n", "e").unwrap_err(),
            1
        );
        assert_eq!(
            Profile::parse("\n203.0.113.2:110 alice\n", "e").unwrap_err(),
            2
        );
    }
}
