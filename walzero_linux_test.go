package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"go.uber.org/zap/zaptest"
)

// unwrittenBytes is how much of the file at path the file system maps as
// allocated but unwritten (FIEMAP_EXTENT_UNWRITTEN): what a write must
// convert, and the WAL's fdatasync commit the journal for. ok is false
// where the file system cannot say.
func unwrittenBytes(t *testing.T, path string) (n int64, ok bool) {
	t.Helper()
	const (
		fsIocFiemap      = 0xC020660B // _IOWR('f', 11, struct fiemap)
		fiemapFlagSync   = 0x1
		fiemapUnwritten  = 0x800
		fiemapLastExtent = 0x1
		maxExtents       = 64
	)
	type extent struct {
		logical, physical, length uint64
		_                         [2]uint64
		flags                     uint32
		_                         [3]uint32
	}
	type fiemap struct {
		start, length                    uint64
		flags, mapped, extentCount, _pad uint32
		extents                          [maxExtents]extent
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var start uint64
	for range 1000 {
		m := fiemap{start: start, length: ^uint64(0), flags: fiemapFlagSync, extentCount: maxExtents}
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&m))); e != 0 {
			if errors.Is(e, syscall.EOPNOTSUPP) || errors.Is(e, syscall.ENOTTY) {
				return 0, false
			}
			t.Fatalf("FIEMAP %s: %v", path, e)
		}
		if m.mapped == 0 {
			return n, true
		}
		for _, x := range m.extents[:m.mapped] {
			if x.flags&fiemapUnwritten != 0 {
				n += int64(x.length)
			}
			if x.flags&fiemapLastExtent != 0 {
				return n, true
			}
			start = x.logical + x.length
		}
	}
	t.Fatalf("FIEMAP %s: no last extent", path)
	return 0, false
}

// What the zeroer is for: the spare it has written holds no unwritten
// blocks, where the pipeline's fallocate left them all unwritten.
func TestWALZeroerLeavesNoUnwrittenBlocks(t *testing.T) {
	w, dir, spare := newSpareWAL(t)
	defer w.Close()
	before, ok := unwrittenBytes(t, spare)
	if !ok || before == 0 {
		t.Skipf("this file system leaves a fallocated file without unwritten extents (FIEMAP ok %v, %d bytes): nothing to convert", ok, before)
	}
	z := &walZeroer{lg: zaptest.NewLogger(t), dir: dir, cutMu: &sync.Mutex{}}
	if err := z.zero(spare); err != nil {
		t.Fatal(err)
	}
	if after, _ := unwrittenBytes(t, spare); after != 0 {
		t.Fatalf("%d of %d unwritten bytes left after zeroing", after, before)
	}
}

// A running member zeroes its WAL's spare segment by itself.
func TestMemberZeroesItsWALSpare(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	c.leader()
	if pays, fs := spareZeroingPays(c.dir); !pays {
		t.Skipf("the test's data dir is on %s, where a member leaves the spare alone", fs)
	}
	if !strings.Contains(c.log.String(), "writing zeros over the wal's spare segments") {
		t.Fatal("no log line says the member zeroes its spares")
	}
	spares, _ := filepath.Glob(filepath.Join(c.dir, "raftexample-1", "*.tmp"))
	if len(spares) == 0 {
		t.Fatal("no spare segment in the WAL dir")
	}
	if n, ok := unwrittenBytes(t, spares[0]); !ok {
		t.Skipf("FIEMAP not supported here (%d)", n)
	}
	eventually(t, 10*time.Second, func() error {
		spares, _ := filepath.Glob(filepath.Join(c.dir, "raftexample-1", "*.tmp"))
		for _, s := range spares {
			if n, _ := unwrittenBytes(t, s); n != 0 {
				return fmt.Errorf("%s: %d bytes unwritten", filepath.Base(s), n)
			}
		}
		return nil
	})
}

// What a write and an fdatasync cost in a segment as the WAL's pipeline
// leaves it (fallocated: unwritten blocks) and as the zeroer does
// (written zeros), by the bytes written per sync. Each pass writes the
// file from its start; a new file every 32 MiB.
//
//	go test -run '^$' -bench BenchmarkSegmentWriteSync -benchtime 3000x .
func BenchmarkSegmentWriteSync(b *testing.B) {
	for _, size := range []int{400, 3000, 6000} {
		for _, zeroed := range []bool{false, true} {
			name := fmt.Sprintf("bytes=%d/fallocated", size)
			if zeroed {
				name = fmt.Sprintf("bytes=%d/zeroed", size)
			}
			b.Run(name, func(b *testing.B) { benchSegmentWriteSync(b, size, zeroed) })
		}
	}
}

func benchSegmentWriteSync(b *testing.B, size int, zeroed bool) {
	const fileBytes = 32 << 20
	dir := b.TempDir()
	buf := make([]byte, size)
	var f *os.File
	newFile := func() {
		if f != nil {
			f.Close()
		}
		var err error
		f, err = os.OpenFile(filepath.Join(dir, fmt.Sprintf("seg-%d", time.Now().UnixNano())), os.O_CREATE|os.O_RDWR|os.O_EXCL, 0o600)
		if err != nil {
			b.Fatal(err)
		}
		if err := syscall.Fallocate(int(f.Fd()), 0, 0, fileBytes); err != nil {
			b.Skipf("fallocate: %v", err)
		}
		if zeroed {
			for off := int64(0); off < fileBytes; off += walZeroChunk {
				if _, err := f.WriteAt(walZeros[:], off); err != nil {
					b.Fatal(err)
				}
			}
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	newFile()
	b.StartTimer()
	off := int64(0)
	for range b.N {
		if off+int64(size) > fileBytes {
			b.StopTimer()
			newFile()
			off = 0
			b.StartTimer()
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			b.Fatal(err)
		}
		off += int64(size)
	}
	b.StopTimer()
	f.Close()
}

func TestSpareZeroingOnlyWhereItPays(t *testing.T) {
	for fs, want := range map[int64]bool{
		ext4Magic:  true,
		xfsMagic:   true,
		0x9123683E: false, // btrfs
		0x2FC12FC1: false, // zfs
		0x01021994: false, // tmpfs
		0x65735546: false, // fuse
	} {
		if got := zeroingPaysOn(fs); got != want {
			t.Errorf("%s (%#x): zeroing %v, want %v", fsName(fs), fs, got, want)
		}
	}
}
