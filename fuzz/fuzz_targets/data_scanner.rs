//! The DATA scanner on arbitrary bytes in arbitrary splits: never a panic,
//! and the bytes it forwards before an end are exactly a prefix of the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mailbrake::session::data::{DataScanner, Scan};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else { return };
    let cut = usize::from(cut).min(body.len());
    let mut s = DataScanner::new();
    let mut out = Vec::new();
    let mut start = 0;
    for piece in [&body[..cut], &body[cut..]] {
        match s.scan(piece) {
            Scan::More { forward } => out.extend_from_slice(&piece[..forward]),
            Scan::End { end } => {
                out.extend_from_slice(s.take_held());
                out.extend_from_slice(&piece[..end]);
                assert!(out.ends_with(b"\r\n.\r\n") || out == b".\r\n");
                assert_eq!(&out[..], &body[..start + end]);
                return;
            }
            Scan::Smuggling => return,
        }
        start += piece.len();
    }
    assert!(body.starts_with(&out));
});
