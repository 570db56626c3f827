//! The entry list of the WGL search: the calls and deadlines of a key's required ops, in
//! one doubly linked list sorted by time, from which linearized ops are lifted out and put
//! back ("dancing links": an unlinked entry keeps its own pointers, so it is relinked in O(1)
//! as long as entries are relinked in the reverse order of their unlinking).

use super::history::Time;
use super::key_history::KeyHistory;

/// Index of the list's head sentinel.
pub(crate) const HEAD: usize = 0;
/// The end of the list.
pub(crate) const NIL: usize = usize::MAX;

#[derive(Clone, Copy, Debug)]
pub(crate) enum Entry {
    Head,
    /// A required op's invocation; `ret` is the index of its return entry.
    Call {
        op: usize,
        ret: usize,
    },
    /// A required op's deadline.
    Return {
        at: Time,
    },
}

/// The calls and returns of a key's required ops, linked in time order.
pub(crate) struct EntryList {
    pub entries: Vec<Entry>,
    pub next: Vec<usize>,
    prev: Vec<usize>,
}

impl EntryList {
    pub(crate) fn new(history: &KeyHistory) -> Self {
        // (time, is a return, op): calls sort before returns at equal times.
        let mut events: Vec<(Time, bool, usize)> = Vec::with_capacity(2 * history.required);
        for (op, &deadline) in history.deadlines.iter().enumerate() {
            events.push((history.ops[op].invoked, false, op));
            events.push((deadline, true, op));
        }
        events.sort_unstable();
        let len = events.len() + 1;
        let mut entries = vec![Entry::Head; len];
        let mut return_of = vec![NIL; history.required];
        for (index, &(at, is_return, op)) in events.iter().enumerate().rev() {
            entries[index + 1] = if is_return {
                return_of[op] = index + 1;
                Entry::Return { at }
            } else {
                Entry::Call {
                    op,
                    ret: return_of[op],
                }
            };
        }
        let next = (1..len).chain([NIL]).collect();
        let prev = [NIL].into_iter().chain(0..len - 1).collect();
        EntryList {
            entries,
            next,
            prev,
        }
    }

    pub(crate) fn first(&self) -> usize {
        self.next[HEAD]
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NIL {
            self.prev[n] = e;
        }
    }

    /// Takes a call entry and its return out of the list.
    pub(crate) fn lift(&mut self, call: usize, ret: usize) {
        self.unlink(call);
        self.unlink(ret);
    }

    /// Puts back what the matching `lift` took out.
    pub(crate) fn unlift(&mut self, call: usize, ret: usize) {
        self.relink(ret);
        self.relink(call);
    }

    /// The required ops whose calls precede the first return: those that may come next.
    pub(crate) fn candidates(&self) -> Vec<usize> {
        let mut ops = Vec::new();
        let mut e = self.first();
        while let Some(&Entry::Call { op, .. }) = self.entries.get(e) {
            ops.push(op);
            e = self.next[e];
        }
        ops
    }
}
