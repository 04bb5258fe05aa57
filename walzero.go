package main

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"go.uber.org/zap"
)

// Why the WAL's spare segments are written with zeros before the WAL takes
// them: etcd's WAL keeps a spare segment ready (its file pipeline makes
// <n>.tmp in the WAL dir and preallocates it with fallocate), and on ext4
// and xfs fallocate leaves the blocks "unwritten". The first write into
// each block then converts its extent, a metadata change, so every
// fdatasync of the WAL also commits the file system's journal. On the
// development VM a 3,000-byte write and fdatasync took 168–181 µs into a
// fallocated file and 99–120 µs into one whose blocks had been written
// (BenchmarkSegmentWriteSync; README, Performance). Databases zero-fill
// their logs for the same reason. A segment is 2 MiB (walSegmentBytes), so this writes as many
// zeros as log, in a few large writes and one fdatasync per segment.
//
// Why it is safe: the WAL takes the spare only inside Save, in its segment
// cut, which renames the file to its segment name before Save returns (a
// cut that fails is fatal to the member: readyLoop stops on any Save
// error). Save runs under walCutMu; the zeroer writes only while it holds
// walCutMu and only after it has checked that the tmp name still names the
// file it opened. So it never writes a file the WAL has taken, and what it
// writes (zeros) is what the spare already reads as. A spare the WAL takes
// before it is zeroed is written as before, only slower.
//
// Only on ext4 and xfs (spareZeroingPays): on a copy-on-write file system
// the WAL writes each block anew whatever it held, so zeros would only
// double its writes.
const (
	walZeroChunk = 256 << 10
	walZeroEvery = 100 * time.Millisecond
)

// walZeros is never written: the source of every zero written.
var walZeros [walZeroChunk]byte

// walZeroer zeroes the WAL's spare segments; its goroutine runs from the
// raft node's start until stopc closes.
type walZeroer struct {
	lg  *zap.Logger
	dir string
	// cutMu is held around every wal.Save (the only call in which the WAL
	// takes its spare segment) and by the zeroer while it checks and
	// writes a spare.
	cutMu *sync.Mutex
	// zeroed are the spares already zeroed (or given up on), newest last.
	zeroed [2]os.FileInfo
	// afterChunk, if set (tests), runs after each chunk is written, with
	// cutMu not held.
	afterChunk func()
	// failing is the error last logged for each spare name, so that one
	// that lasts (a spare that cannot be opened is met every tick) is
	// logged once, not ten times a second.
	failing map[string]string
}

func (z *walZeroer) run(stopc <-chan struct{}, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stopc:
			return
		case <-t.C:
		}
		z.tick()
	}
}

// tick zeroes whichever spare needs it. The pipeline alternates between
// two names.
func (z *walZeroer) tick() {
	for _, name := range [...]string{"0.tmp", "1.tmp"} {
		err := z.zero(filepath.Join(z.dir, name))
		if err == nil {
			delete(z.failing, name)
			continue
		}
		if z.failing[name] == err.Error() {
			continue
		}
		if z.failing == nil {
			z.failing = make(map[string]string)
		}
		z.failing[name] = err.Error()
		z.lg.Warn("write zeros over the wal's spare segment; the wal will write it as it is", zap.String("file", name), zap.Error(err))
	}
}

// zero writes zeros over the spare segment at path, if there is one not yet
// zeroed. It stops, with no error, as soon as the WAL has taken the file.
func (z *walZeroer) zero(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	for _, done := range z.zeroed {
		if done != nil && os.SameFile(done, fi) {
			return nil
		}
	}
	if fi.Size() < walSegmentBytes {
		// The pipeline has created it and not yet preallocated it: next
		// time. Writing now would allocate the blocks just the same, but
		// the segment's size is the pipeline's to set.
		return nil
	}
	// Given up on or done, it is not tried again.
	z.zeroed[0], z.zeroed[1] = z.zeroed[1], fi
	for off := int64(0); off < fi.Size(); off += walZeroChunk {
		wrote, err := z.writeSpare(f, fi, path, off, min(walZeroChunk, fi.Size()-off))
		if err != nil {
			return err
		}
		if !wrote {
			metricWALSpares.WithLabelValues("taken").Inc()
			return nil
		}
		failpoint("wal-spare-chunk-zeroed")
		if z.afterChunk != nil {
			z.afterChunk()
		}
	}
	metricWALSpares.WithLabelValues("zeroed").Inc()
	// If the WAL has taken it meanwhile, this syncs its writes too: harmless.
	return fileutil.Fdatasync(f)
}

// writeSpare writes n zeros at off in f, which was opened as path, unless
// path no longer names f: the WAL has taken it (or the pipeline has gone).
func (z *walZeroer) writeSpare(f *os.File, fi os.FileInfo, path string, off, n int64) (bool, error) {
	z.cutMu.Lock()
	defer z.cutMu.Unlock()
	cur, err := os.Stat(path)
	if err != nil || !os.SameFile(cur, fi) {
		return false, nil
	}
	_, err = f.WriteAt(walZeros[:n], off)
	return err == nil, err
}
