//! printk's arguments captured by value: the line is made by the console, not by its caller.
//!
//! A `pr_*!` line whose format string has only plain `{}`s ([`simple`], decided at compile
//! time) is pushed as its format string, cut at compile time at its holes ([`pieces`]), and its
//! arguments, each taken by value where
//! its type allows ([`Val`]): integers, `bool`, `char`, and strings (their bytes copied). Any
//! other `Display` argument is formatted on its own, into the record. The macros pick each
//! argument's capture by its type at the call site ([`Probe`]: integers and strings first,
//! then any `Display`, then anything, for format strings that are not simple and never come
//! here), and fall back to `core::fmt` for everything else (`{name}`, `{:x}`, `{:?}`, named
//! arguments): the line then comes out exactly as `format!` would make it.
//!
//! The encoding, in the record's text: per argument a tag byte, then 8 bytes (an integer,
//! little-endian), 1 (a `bool`), 4 (a `char`) or a length byte and the bytes (a string). Making
//! the line from it uses no `core::fmt` and no allocation: the panic path, which must be
//! async-signal-safe, makes lines this way too.

use std::fmt::{self, Display, Write as _};

use super::{LineBuf, LineOut};

/// One argument as a line's caller captures it.
#[doc(hidden)]
pub enum Val<'a> {
    /// An unsigned integer.
    U(u64),
    /// A signed integer.
    I(i64),
    /// A `bool`.
    Bool(bool),
    /// A `char`.
    Char(char),
    /// A string: its bytes are copied.
    Str(&'a str),
    /// Any other `Display`: formatted on its own into the record.
    Display(&'a dyn Display),
    /// Not `Display`: the format string is not simple (such a line never comes here).
    Unsupported,
}

/// An argument, probed for its capture by method resolution on `&&Probe(arg)`: [`ByValue`]
/// (integers, `bool`, `char`, strings), else [`ByDisplay`], else [`ByNothing`].
#[doc(hidden)]
pub struct Probe<'a, T: ?Sized>(pub &'a T);

/// The capture of an argument taken by value.
#[doc(hidden)]
pub trait ByValue<'a> {
    /// The argument, captured.
    fn printk_val(&self) -> Val<'a>;
}

/// The capture of any other `Display` argument.
#[doc(hidden)]
pub trait ByDisplay<'a> {
    /// The argument, captured.
    fn printk_val(&self) -> Val<'a>;
}

/// The capture of an argument that is not `Display`.
#[doc(hidden)]
pub trait ByNothing<'a> {
    /// The argument, captured.
    fn printk_val(&self) -> Val<'a>;
}

macro_rules! by_value {
    ($variant:ident as $as:ty: $($t:ty),*) => {$(
        impl<'a> ByValue<'a> for &Probe<'a, $t> {
            fn printk_val(&self) -> Val<'a> {
                Val::$variant(*self.0 as $as)
            }
        }
    )*};
}
by_value!(U as u64: u8, u16, u32, u64, usize);
by_value!(I as i64: i8, i16, i32, i64, isize);
by_value!(Bool as bool: bool);
by_value!(Char as char: char);

impl<'a> ByValue<'a> for &Probe<'a, str> {
    fn printk_val(&self) -> Val<'a> {
        Val::Str(self.0)
    }
}

impl<'a> ByValue<'a> for &Probe<'a, &str> {
    fn printk_val(&self) -> Val<'a> {
        Val::Str(self.0)
    }
}

impl<'a> ByValue<'a> for &Probe<'a, String> {
    fn printk_val(&self) -> Val<'a> {
        Val::Str(self.0)
    }
}

impl<'a, T: Display + 'a> ByDisplay<'a> for &&Probe<'a, T> {
    fn printk_val(&self) -> Val<'a> {
        Val::Display(self.0)
    }
}

impl<'a, T: ?Sized> ByNothing<'a> for Probe<'a, T> {
    fn printk_val(&self) -> Val<'a> {
        Val::Unsupported
    }
}

#[doc(hidden)]
pub use crate::kernel::sync::ring::Piece;

/// What `fmt[i..]` starts with: a hole `{}`, an escaped brace (`{{`, `}}`), a lone brace (the
/// string is not simple), or plain text.
#[derive(Clone, Copy)]
enum At {
    Hole,
    Escape,
    Brace,
    Text,
}

const fn at(b: &[u8], i: usize) -> At {
    let next = if i + 1 < b.len() { b[i + 1] } else { 0 };
    match (b[i], next) {
        (b'{', b'}') => At::Hole,
        (b'{', b'{') | (b'}', b'}') => At::Escape,
        (b'{', _) | (b'}', _) => At::Brace,
        _ => At::Text,
    }
}

/// Whether `fmt` has only plain `{}`s (and `{{` / `}}`), exactly `args` of them: such a line
/// can be made from its [`pieces`] and its arguments by value. Evaluated at compile time by the
/// `pr_*!` macros.
#[doc(hidden)]
pub const fn simple(fmt: &str, args: usize) -> bool {
    let b = fmt.as_bytes();
    let (mut i, mut holes) = (0, 0);
    while i < b.len() {
        match at(b, i) {
            At::Hole => {
                holes += 1;
                i += 2;
            }
            At::Escape => i += 2,
            At::Brace => return false,
            At::Text => i += 1,
        }
    }
    holes == args
}

/// How many [`pieces`] `fmt` is cut into: one more than its holes and escaped braces.
#[doc(hidden)]
pub const fn pieces_len(fmt: &str) -> usize {
    let b = fmt.as_bytes();
    let (mut i, mut n) = (0, 1);
    while i < b.len() {
        match at(b, i) {
            At::Hole | At::Escape => {
                n += 1;
                i += 2;
            }
            At::Brace | At::Text => i += 1,
        }
    }
    n
}

/// `fmt` cut into `N` ([`pieces_len`]) pieces: at each hole (which follows its piece) and each
/// escaped brace (whose first brace ends its piece). Compile time: the console then writes the
/// runs between the arguments without looking for braces.
#[doc(hidden)]
pub const fn pieces<const N: usize>(fmt: &'static str) -> [Piece; N] {
    let b = fmt.as_bytes();
    let mut out = [Piece {
        text: "",
        hole: false,
    }; N];
    let (mut i, mut from, mut k) = (0, 0, 0);
    while i < b.len() {
        match at(b, i) {
            kind @ (At::Hole | At::Escape) => {
                let hole = matches!(kind, At::Hole);
                out[k] = Piece {
                    text: substr(fmt, from, if hole { i } else { i + 1 }),
                    hole,
                };
                k += 1;
                i += 2;
                from = i;
            }
            At::Brace | At::Text => i += 1,
        }
    }
    out[k] = Piece {
        text: substr(fmt, from, b.len()),
        hole: false,
    };
    out
}

/// `s[from..to]`, in a `const fn` (the cuts are at ASCII braces: character boundaries).
const fn substr(s: &'static str, from: usize, to: usize) -> &'static str {
    let (head, _) = s.as_bytes().split_at(to);
    let (_, mid) = head.split_at(from);
    match std::str::from_utf8(mid) {
        Ok(s) => s,
        Err(_) => panic!("a format string cut inside a character"),
    }
}

const TAG_U: u8 = 1;
const TAG_I: u8 = 2;
const TAG_BOOL: u8 = 3;
const TAG_CHAR: u8 = 4;
const TAG_STR: u8 = 5;

/// Where a `Display` argument is formatted in the record: fails once it would not fit.
struct Slice<'a> {
    out: &'a mut [u8],
    len: usize,
}

impl fmt::Write for Slice<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > self.out.len() {
            return Err(fmt::Error);
        }
        self.out[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Appends `parts` to `out` at `at` (advancing it), if they all fit.
fn put(out: &mut [u8], at: &mut usize, parts: &[&[u8]]) -> Option<()> {
    let len = parts.iter().map(|p| p.len()).sum::<usize>();
    let dst = out.get_mut(*at..*at + len)?;
    let mut i = 0;
    for p in parts {
        dst[i..i + p.len()].copy_from_slice(p);
        i += p.len();
    }
    *at += len;
    Some(())
}

/// Encodes `vals` into `out`; the bytes used, or `None` if they do not fit (or one is
/// [`Val::Unsupported`]).
pub(super) fn encode(vals: &[Val<'_>], out: &mut [u8]) -> Option<usize> {
    let mut at = 0;
    for v in vals {
        match v {
            Val::U(n) => put(out, &mut at, &[&[TAG_U], &n.to_le_bytes()])?,
            Val::I(n) => put(out, &mut at, &[&[TAG_I], &n.to_le_bytes()])?,
            Val::Bool(b) => put(out, &mut at, &[&[TAG_BOOL, u8::from(*b)]])?,
            Val::Char(c) => put(out, &mut at, &[&[TAG_CHAR], &u32::from(*c).to_le_bytes()])?,
            Val::Str(s) => {
                let n = u8::try_from(s.len()).ok()?;
                put(out, &mut at, &[&[TAG_STR, n], s.as_bytes()])?;
            }
            Val::Display(d) => {
                // Formatted in place, after the tag and the length byte.
                let body = at + 2;
                let end = out.len().min(body + usize::from(u8::MAX));
                let mut w = Slice {
                    out: out.get_mut(body..end)?,
                    len: 0,
                };
                write!(w, "{d}").ok()?;
                let n = w.len;
                put(out, &mut at, &[&[TAG_STR, n as u8]])?;
                at += n;
            }
            Val::Unsupported => return None,
        }
    }
    Some(at)
}

/// One encoded argument, read back.
enum Arg<'a> {
    U(u64),
    I(i64),
    Bool(bool),
    Char(char),
    Str(&'a [u8]),
}

/// Reads the next argument of `enc` from `at` (advancing it); `None` at the end or on bytes
/// that are not an encoding.
fn decode<'a>(enc: &'a [u8], at: &mut usize) -> Option<Arg<'a>> {
    let tag = *enc.get(*at)?;
    let body = *at + 1;
    let (arg, len) = match tag {
        TAG_U => (
            Arg::U(u64::from_le_bytes(
                enc.get(body..body + 8)?.try_into().ok()?,
            )),
            8,
        ),
        TAG_I => (
            Arg::I(i64::from_le_bytes(
                enc.get(body..body + 8)?.try_into().ok()?,
            )),
            8,
        ),
        TAG_BOOL => (Arg::Bool(*enc.get(body)? != 0), 1),
        TAG_CHAR => {
            let c = u32::from_le_bytes(enc.get(body..body + 4)?.try_into().ok()?);
            (Arg::Char(char::from_u32(c)?), 4)
        }
        TAG_STR => {
            let n = usize::from(*enc.get(body)?);
            (Arg::Str(enc.get(body + 1..body + 1 + n)?), 1 + n)
        }
        _ => return None,
    };
    *at = body + len;
    Some(arg)
}

/// Writes `n` in decimal (no `core::fmt`).
fn write_u64(out: &mut impl LineOut, n: u64) {
    let (digits, from) = super::decimal(n);
    out.write_bytes(&digits[from..]);
}

impl Arg<'_> {
    /// Writes the argument as `{}` shows it.
    fn write(&self, out: &mut impl LineOut) {
        match *self {
            Arg::U(n) => write_u64(out, n),
            Arg::I(n) => {
                if n < 0 {
                    out.write_bytes(b"-");
                }
                write_u64(out, n.unsigned_abs());
            }
            Arg::Bool(b) => out.write_bytes(if b { b"true" } else { b"false" }),
            Arg::Char(c) => out.write_bytes(c.encode_utf8(&mut [0; 4]).as_bytes()),
            Arg::Str(s) => out.write_bytes(s),
        }
    }
}

/// Writes the line of `pieces` into `out`, each hole filled by `hole`.
fn fill<W: LineOut>(pieces: &[Piece], out: &mut W, mut hole: impl FnMut(&mut W)) {
    for p in pieces {
        if !p.text.is_empty() {
            out.write_bytes(p.text.as_bytes());
        }
        if p.hole {
            hole(out);
        }
    }
}

/// Makes the line of `template` and the arguments encoded in `enc` (the console's side, and
/// the panic path's: no `core::fmt`, no allocation). A hole without its argument stays empty.
pub(super) fn format_encoded(template: &[Piece], enc: &[u8], out: &mut impl LineOut) {
    let mut at = 0;
    fill(template, out, |out| {
        if let Some(arg) = decode(enc, &mut at) {
            arg.write(out);
        }
    });
}

/// Makes the line of `template` and `vals` at once (a traced line, or arguments that do not fit
/// encoded).
pub(super) fn format_vals(template: &[Piece], vals: &[Val<'_>], out: &mut LineBuf) {
    let mut vals = vals.iter();
    fill(template, out, |out| match vals.next() {
        Some(Val::U(n)) => Arg::U(*n).write(out),
        Some(Val::I(n)) => Arg::I(*n).write(out),
        Some(Val::Bool(b)) => Arg::Bool(*b).write(out),
        Some(Val::Char(c)) => Arg::Char(*c).write(out),
        Some(Val::Str(s)) => out.write_bytes(s.as_bytes()),
        Some(Val::Display(d)) => {
            let _ = write!(out, "{d}");
        }
        Some(Val::Unsupported) | None => {}
    });
}
