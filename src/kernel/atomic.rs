//! Atomic integers: the kernel's `atomic_t` and `atomic64_t`.
//!
//! The lab uses them for flags shared between a kthread and module exit (exercise 6): plain
//! integers whose every operation is indivisible, usable from any context (process, softirq, a
//! signal handler) because they never block, allocate or lock.
//!
//! | C                                   | Rust                              |
//! |-------------------------------------|-----------------------------------|
//! | `atomic_t v = ATOMIC_INIT(0);`      | `static V: Atomic = Atomic::new(0);` (or [`ATOMIC_INIT`]) |
//! | `atomic_set(&v, i)`, `atomic_read(&v)` | `v.set(i)`, `v.read()`         |
//! | `atomic_add/sub/inc/dec(&v)`        | `v.add(i)`, `v.sub(i)`, `v.inc()`, `v.dec()` |
//! | `atomic_inc_return`, `atomic_dec_return`, `atomic_add_return` | same names     |
//! | `atomic_sub_and_test`, `atomic_dec_and_test`, `atomic_inc_and_test` | same names |
//! | `atomic_xchg`, `atomic_cmpxchg`     | `v.xchg(new)`, `v.cmpxchg(old, new)` |
//!
//! # Orderings
//! Every operation is `SeqCst`. The kernel's `atomic_read`/`atomic_set` are unordered and only
//! the value-returning RMW operations are fully ordered; being stronger costs nothing measurable
//! here and lets a flag set before `wake_up()` be seen by the woken thread without extra
//! barriers (the lab's exercise 6 relies on exactly that). Arithmetic wraps, as in C.
//!
//! Context: any. Nothing here blocks, allocates or panics.

use core::sync::atomic::{AtomicI32, AtomicI64, Ordering::SeqCst};

/// `atomic_t`: a 32-bit signed integer with indivisible operations.
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct Atomic(AtomicI32);

/// `ATOMIC_INIT(0)`: a zeroed [`Atomic`], for `static` initialisers.
#[allow(clippy::declare_interior_mutable_const)]
pub const ATOMIC_INIT: Atomic = Atomic::new(0);

/// Generates the kernel's operation set on an atomic type.
macro_rules! atomic_ops {
    ($ty:ident, $inner:ident, $int:ty, $c:literal) => {
        impl $ty {
            #[doc = concat!("`", $c, "_INIT(i)`: a new atomic holding `i`.")]
            pub const fn new(i: $int) -> Self {
                Self($inner::new(i))
            }

            #[doc = concat!("`", $c, "_read`: the current value.")]
            pub fn read(&self) -> $int {
                self.0.load(SeqCst)
            }

            #[doc = concat!("`", $c, "_set`: stores `i`.")]
            pub fn set(&self, i: $int) {
                self.0.store(i, SeqCst)
            }

            #[doc = concat!("`", $c, "_add`: adds `i` (wrapping).")]
            pub fn add(&self, i: $int) {
                self.0.fetch_add(i, SeqCst);
            }

            #[doc = concat!("`", $c, "_sub`: subtracts `i` (wrapping).")]
            pub fn sub(&self, i: $int) {
                self.0.fetch_sub(i, SeqCst);
            }

            #[doc = concat!("`", $c, "_inc`: adds one.")]
            pub fn inc(&self) {
                self.add(1)
            }

            #[doc = concat!("`", $c, "_dec`: subtracts one.")]
            pub fn dec(&self) {
                self.sub(1)
            }

            #[doc = concat!("`", $c, "_add_return`: adds `i`, returns the new value.")]
            pub fn add_return(&self, i: $int) -> $int {
                self.0.fetch_add(i, SeqCst).wrapping_add(i)
            }

            #[doc = concat!("`", $c, "_sub_return`: subtracts `i`, returns the new value.")]
            pub fn sub_return(&self, i: $int) -> $int {
                self.0.fetch_sub(i, SeqCst).wrapping_sub(i)
            }

            #[doc = concat!("`", $c, "_inc_return`: adds one, returns the new value.")]
            pub fn inc_return(&self) -> $int {
                self.add_return(1)
            }

            #[doc = concat!("`", $c, "_dec_return`: subtracts one, returns the new value.")]
            pub fn dec_return(&self) -> $int {
                self.sub_return(1)
            }

            #[doc = concat!("`", $c, "_sub_and_test`: subtracts `i`; true if the result is 0.")]
            pub fn sub_and_test(&self, i: $int) -> bool {
                self.sub_return(i) == 0
            }

            #[doc = concat!("`", $c, "_dec_and_test`: subtracts one; true if the result is 0.")]
            pub fn dec_and_test(&self) -> bool {
                self.dec_return() == 0
            }

            #[doc = concat!("`", $c, "_inc_and_test`: adds one; true if the result is 0.")]
            pub fn inc_and_test(&self) -> bool {
                self.inc_return() == 0
            }

            #[doc = concat!("`", $c, "_xchg`: stores `new`, returns the old value.")]
            pub fn xchg(&self, new: $int) -> $int {
                self.0.swap(new, SeqCst)
            }

            #[doc = concat!("`", $c, "_cmpxchg`: stores `new` if the value is `old`; returns the")]
            /// value found (equal to `old` exactly when the exchange happened), as in C.
            pub fn cmpxchg(&self, old: $int, new: $int) -> $int {
                match self.0.compare_exchange(old, new, SeqCst, SeqCst) {
                    Ok(v) | Err(v) => v,
                }
            }
        }
    };
}

atomic_ops!(Atomic, AtomicI32, i32, "atomic");

/// `atomic64_t`: a 64-bit signed integer with indivisible operations.
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct Atomic64(AtomicI64);

atomic_ops!(Atomic64, AtomicI64, i64, "atomic64");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_semantics() {
        let v = Atomic::new(1);
        assert!(v.dec_and_test());
        assert!(!v.dec_and_test());
        assert_eq!(v.read(), -1);
        assert!(v.inc_and_test());
        assert_eq!(v.add_return(5), 5);
        assert!(v.sub_and_test(5));
        assert_eq!(v.xchg(7), 0);
        assert_eq!(v.cmpxchg(3, 9), 7, "failed exchange returns what it found");
        assert_eq!(v.read(), 7);
        assert_eq!(v.cmpxchg(7, 9), 7);
        assert_eq!(v.read(), 9);
        v.set(i32::MAX);
        assert_eq!(v.inc_return(), i32::MIN, "wraps as in C");
        let w = Atomic64::new(i64::from(i32::MAX));
        assert_eq!(w.inc_return(), 1 << 31);
        let zero = ATOMIC_INIT;
        assert_eq!(zero.read(), 0);
    }
}
