package powerfs

import (
	"maps"
	"slices"
	"syscall"
	"time"
)

// The model: the tree as a process sees it now, and, beside it, the part of
// it a power cut keeps. Nothing here knows FUSE; fuse.go serves it.
//
// The durability rules are strict POSIX, not what ext4 happens to do:
//   - a file's bytes and size are durable as of its last fsync or fdatasync
//     (both are taken as making data and size durable);
//   - a directory's entries (names created, renamed, removed in it) are
//     durable as of its last fsync; fsyncing a file does not make its name
//     durable, and fsyncing a directory does not make its files' bytes
//     durable;
//   - after a cut, the tree is what the durable entries reach from the root,
//     each file holding its durable bytes. A file whose name never became
//     durable is gone, whatever was fsynced into it.
//
// File bytes are kept in pages shared between the current and the durable
// view; a write copies a page once per fsync interval (copy on write), so
// an fsync costs the pages written since the last one, not the file size.
// Pages never written (preallocated space, holes) are absent and read as
// zeros, so a 64 MiB preallocated WAL segment costs only what was written.

const pageSize = 4096

type node struct {
	ino   uint64
	dir   bool
	perm  uint32
	mtime time.Time

	// Directories: names now, and names as of the last fsync.
	entries, durEntries map[string]*node

	// Regular files: pages now, pages as of the last fsync, and which
	// pages of the current view are private to it (written, truncated away
	// or added since the last fsync).
	pages, durPages map[int64][]byte
	dirty           map[int64]struct{}
	size, durSize   int64
}

func newDir(ino uint64, perm uint32) *node {
	return &node{ino: ino, dir: true, perm: perm, mtime: time.Now(),
		entries: map[string]*node{}, durEntries: map[string]*node{}}
}

func newFile(ino uint64, perm uint32) *node {
	return &node{ino: ino, perm: perm, mtime: time.Now(),
		pages: map[int64][]byte{}, durPages: map[int64][]byte{}, dirty: map[int64]struct{}{}}
}

// tree is the whole model; its methods are not safe for concurrent use
// (FS serialises them).
type tree struct {
	root    *node
	nextIno uint64
}

func newTree() *tree {
	return &tree{root: newDir(1, 0o755), nextIno: 2}
}

func (t *tree) ino() uint64 {
	t.nextIno++
	return t.nextIno - 1
}

func (t *tree) create(d *node, name string, perm uint32, dir bool) (*node, syscall.Errno) {
	if !d.dir {
		return nil, syscall.ENOTDIR
	}
	if _, ok := d.entries[name]; ok {
		return nil, syscall.EEXIST
	}
	var n *node
	if dir {
		n = newDir(t.ino(), perm)
	} else {
		n = newFile(t.ino(), perm)
	}
	d.entries[name] = n
	d.mtime = time.Now()
	return n, 0
}

func (t *tree) remove(d *node, name string, dir bool) syscall.Errno {
	n, ok := d.entries[name]
	switch {
	case !ok:
		return syscall.ENOENT
	case dir && !n.dir:
		return syscall.ENOTDIR
	case !dir && n.dir:
		return syscall.EISDIR
	case dir && len(n.entries) > 0:
		return syscall.ENOTEMPTY
	}
	delete(d.entries, name)
	d.mtime = time.Now()
	return 0
}

const renameNoReplace = 1 // RENAME_NOREPLACE

func (t *tree) rename(from *node, name string, to *node, newName string, flags uint32) syscall.Errno {
	if flags&^renameNoReplace != 0 {
		return syscall.EINVAL // RENAME_EXCHANGE, RENAME_WHITEOUT: nothing here uses them
	}
	n, ok := from.entries[name]
	if !ok {
		return syscall.ENOENT
	}
	if old, ok := to.entries[newName]; ok {
		switch {
		case old == n:
			return 0
		case flags&renameNoReplace != 0:
			return syscall.EEXIST
		case n.dir && !old.dir:
			return syscall.ENOTDIR
		case !n.dir && old.dir:
			return syscall.EISDIR
		case old.dir && len(old.entries) > 0:
			return syscall.ENOTEMPTY
		}
	}
	if n.dir && (n == to || n.contains(to)) {
		return syscall.EINVAL
	}
	delete(from.entries, name)
	to.entries[newName] = n
	from.mtime, to.mtime = time.Now(), time.Now()
	return 0
}

func (n *node) contains(d *node) bool {
	for _, c := range n.entries {
		if c == d || (c.dir && c.contains(d)) {
			return true
		}
	}
	return false
}

// page returns page i of the current view for writing, copying it first
// if the durable view shares it.
func (n *node) page(i int64) []byte {
	if _, ok := n.dirty[i]; ok {
		if p := n.pages[i]; p != nil {
			return p
		}
	}
	p := make([]byte, pageSize)
	copy(p, n.pages[i])
	n.pages[i] = p
	n.dirty[i] = struct{}{}
	return p
}

func (n *node) write(data []byte, off int64) {
	for done := 0; done < len(data); {
		at := off + int64(done)
		p := n.page(at / pageSize)
		done += copy(p[at%pageSize:], data[done:])
	}
	n.size = max(n.size, off+int64(len(data)))
	n.mtime = time.Now()
}

func (n *node) read(dest []byte, off int64) int {
	if off >= n.size {
		return 0
	}
	dest = dest[:min(int64(len(dest)), n.size-off)]
	for done := 0; done < len(dest); {
		at := off + int64(done)
		chunk := dest[done:min(len(dest), done+int(pageSize-at%pageSize))]
		if p := n.pages[at/pageSize]; p != nil {
			copy(chunk, p[at%pageSize:])
		} else {
			clear(chunk)
		}
		done += len(chunk)
	}
	return len(dest)
}

func (n *node) truncate(size int64) {
	if size < n.size {
		for i := range n.pages {
			if i*pageSize >= size {
				delete(n.pages, i)
				n.dirty[i] = struct{}{}
			}
		}
		if size%pageSize != 0 {
			if _, ok := n.pages[size/pageSize]; ok {
				clear(n.page(size / pageSize)[size%pageSize:])
			}
		}
	}
	n.size = size
	n.mtime = time.Now()
}

// sync makes n's current state durable: bytes and size for a file, the
// entries for a directory.
func (n *node) sync() {
	if n.dir {
		n.durEntries = maps.Clone(n.entries)
		return
	}
	for i := range n.dirty {
		if p, ok := n.pages[i]; ok {
			n.durPages[i] = p
		} else {
			delete(n.durPages, i)
		}
	}
	clear(n.dirty)
	n.durSize = n.size
}

// cut is the power cut: every node reachable through durable entries goes
// back to its durable state, and the rest is forgotten.
func (t *tree) cut() {
	visit(t.root, func(n *node) {
		if n.dir {
			n.entries = maps.Clone(n.durEntries) // visit then walks these
			return
		}
		n.pages = maps.Clone(n.durPages)
		clear(n.dirty)
		n.size = n.durSize
	})
}

// unsynced counts what a cut would throw away now: file pages written and
// not fsynced, and directories whose entries changed since their fsync.
func (t *tree) unsynced() (pages, dirs int) {
	visit(t.root, func(n *node) {
		if !n.dir {
			pages += len(n.dirty)
		} else if !maps.Equal(n.entries, n.durEntries) {
			dirs++
		}
	})
	return pages, dirs
}

// visit calls fn on every node reachable from root through the current
// entries, once each, a directory before its children (so fn may replace
// a directory's entries and the walk follows the new ones).
func visit(root *node, fn func(*node)) {
	seen := map[*node]bool{}
	var walk func(n *node)
	walk = func(n *node) {
		if seen[n] {
			return
		}
		seen[n] = true
		fn(n)
		for _, name := range slices.Sorted(maps.Keys(n.entries)) {
			walk(n.entries[name])
		}
	}
	walk(root)
}
