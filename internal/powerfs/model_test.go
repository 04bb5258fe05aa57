package powerfs

import (
	"bytes"
	"syscall"
	"testing"
)

func mustCreate(t *testing.T, tr *tree, d *node, name string, dir bool) *node {
	t.Helper()
	n, errno := tr.create(d, name, 0o644, dir)
	if errno != 0 {
		t.Fatalf("create %s: %v", name, errno)
	}
	return n
}

func content(n *node) []byte {
	buf := make([]byte, n.size)
	return buf[:n.read(buf, 0)]
}

func TestModelFileData(t *testing.T) {
	tr := newTree()
	f := mustCreate(t, tr, tr.root, "f", false)
	tr.root.sync()

	f.write([]byte("durable"), 0)
	f.sync()
	f.write([]byte(" and more"), 7)
	if got := string(content(f)); got != "durable and more" {
		t.Fatalf("before the cut: %q", got)
	}
	if pages, _ := tr.unsynced(); pages != 1 {
		t.Fatalf("unsynced pages = %d, want 1", pages)
	}
	tr.cut()
	if got := string(content(tr.root.entries["f"])); got != "durable" {
		t.Fatalf("written + fsynced, then written: after the cut %q, want %q", got, "durable")
	}

	// A truncation is data too: undone by the cut unless fsynced.
	f.truncate(3)
	tr.cut()
	if got := string(content(f)); got != "durable" {
		t.Fatalf("unsynced truncation survived the cut: %q", got)
	}
	f.truncate(3)
	f.sync()
	tr.cut()
	if got := string(content(f)); got != "dur" {
		t.Fatalf("fsynced truncation: %q", got)
	}
}

func TestModelPagesAcrossBoundaries(t *testing.T) {
	tr := newTree()
	f := mustCreate(t, tr, tr.root, "f", false)
	tr.root.sync()
	// Preallocation: size grows, nothing is stored, it reads as zeros.
	f.truncate(64 << 20)
	f.sync()
	if len(f.pages) != 0 {
		t.Fatalf("preallocated file holds %d pages", len(f.pages))
	}
	data := bytes.Repeat([]byte("abcdefg"), 2000) // 14000 bytes over 5 pages
	f.write(data, pageSize-100)
	f.sync()
	f.write(bytes.Repeat([]byte{'x'}, 10), pageSize-105) // straddles pages 0 and 1, unsynced
	tr.cut()
	got := make([]byte, len(data)+200)
	f.read(got, pageSize-200)
	want := append(make([]byte, 100), data...)
	want = append(want, make([]byte, 100)...)
	if !bytes.Equal(got, want) {
		t.Fatal("after the cut the file does not hold what was fsynced")
	}
	if f.size != 64<<20 {
		t.Fatalf("size %d after the cut, want the fsynced 64 MiB", f.size)
	}
}

func TestModelNames(t *testing.T) {
	tr := newTree()
	d := mustCreate(t, tr, tr.root, "d", true)
	tr.root.sync()

	// A file fsynced into a directory that was never fsynced is gone.
	f := mustCreate(t, tr, d, "lost", false)
	f.write([]byte("x"), 0)
	f.sync()
	tr.cut()
	if _, ok := d.entries["lost"]; ok {
		t.Fatal("a created file whose directory was never fsynced survived the cut")
	}

	// Once the directory is fsynced, the name stays.
	f = mustCreate(t, tr, d, "kept", false)
	f.write([]byte("y"), 0)
	f.sync()
	d.sync()
	tr.cut()
	if got := d.entries["kept"]; got == nil || string(content(got)) != "y" {
		t.Fatal("a file fsynced in an fsynced directory was lost")
	}

	// A rename is undone unless the directory is fsynced after it; a
	// removal too.
	if errno := tr.rename(d, "kept", d, "renamed", 0); errno != 0 {
		t.Fatal(errno)
	}
	tr.cut()
	if d.entries["kept"] == nil || d.entries["renamed"] != nil {
		t.Fatalf("unsynced rename survived the cut: %v", d.entries)
	}
	if errno := tr.remove(d, "kept", false); errno != 0 {
		t.Fatal(errno)
	}
	tr.cut()
	if d.entries["kept"] == nil {
		t.Fatal("unsynced removal survived the cut")
	}

	// A new directory's own name needs its parent fsynced.
	sub := mustCreate(t, tr, tr.root, "sub", true)
	mustCreate(t, tr, sub, "f", false)
	sub.sync()
	tr.cut()
	if tr.root.entries["sub"] != nil {
		t.Fatal("a directory whose parent was never fsynced survived the cut")
	}
}

func TestModelErrors(t *testing.T) {
	tr := newTree()
	d := mustCreate(t, tr, tr.root, "d", true)
	f := mustCreate(t, tr, d, "f", false)
	for _, c := range []struct {
		name string
		got  syscall.Errno
		want syscall.Errno
	}{
		{"create existing", func() syscall.Errno { _, e := tr.create(d, "f", 0, false); return e }(), syscall.EEXIST},
		{"create in a file", func() syscall.Errno { _, e := tr.create(f, "x", 0, false); return e }(), syscall.ENOTDIR},
		{"rmdir non-empty", tr.remove(tr.root, "d", true), syscall.ENOTEMPTY},
		{"unlink a directory", tr.remove(tr.root, "d", false), syscall.EISDIR},
		{"rmdir a file", tr.remove(d, "f", true), syscall.ENOTDIR},
		{"remove missing", tr.remove(d, "nope", false), syscall.ENOENT},
		{"rename missing", tr.rename(d, "nope", d, "x", 0), syscall.ENOENT},
		{"rename into itself", tr.rename(tr.root, "d", d, "d2", 0), syscall.EINVAL},
		{"rename no-replace", func() syscall.Errno {
			mustCreate(t, tr, d, "g", false)
			return tr.rename(d, "f", d, "g", renameNoReplace)
		}(), syscall.EEXIST},
		{"rename exchange", tr.rename(d, "f", d, "g", 2), syscall.EINVAL},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.name, c.got, c.want)
		}
	}
}
