package main

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// The disk: a member's WAL directory and snapshot directory.
//
// What must hold across any crash, for every snapshot S this member uses:
//  1. S's file is written and fsynced before S's WAL record (a record never
//     points at a missing file; a file may lack its record: an orphan);
//  2. a hard state whose commit is at least S's index is durable in the WAL
//     before anything depends on S: before the member tells the leader it
//     holds S, before raft's in-memory log is replaced by S, and before any
//     WAL segment or snapshot file older than S is purged. Restart uses only
//     snapshots that a durable hard state commits (wal.ValidSnapshotEntries,
//     or readWALAt's check);
//  3. purging never removes the newest snapshot the durable WAL can use;
//  4. a name is durable only once its directory is fsynced (strict POSIX;
//     ext4, XFS and btrfs happen to be kinder, other filesystems are not).
//     So every directory this member creates is fsynced into its parent,
//     the new WAL directory is fsynced once wal.Create has put its first
//     segment there (Create fsyncs only the parent), and the snapshot
//     directory is fsynced after each new file and before its WAL record.
//     Without these, a power cut can leave a WAL record naming a snapshot
//     file that is gone, or an empty WAL directory: a blank member.

// walSegmentBytes is the size of a WAL segment (etcd's default: 64 MiB).
// A restart decodes the whole segment that holds the newest snapshot, more
// than once (wal.ValidSnapshotEntries, ReadAll; a torn tail adds a scan,
// the repair and a second ReadAll), and purging removes whole segments
// only. With 64 MiB segments a member that had written for a while took
// tens of seconds to restart in the fault suite's race-detector builds;
// with 8 MiB, a torn-tail restart over 66,769 records still took 20 s
// there (passes of 6.0, 6.7, 3.6 and 3.6 s; 1-hour soak). Smaller segments
// bound that work; the cost is a segment cut (a preallocated file renamed
// in, a few fsyncs) every 2 MiB of log.
const walSegmentBytes = 2 << 20

func init() { wal.SegmentSizeBytes = walSegmentBytes }

func walMetadata(id uint64) []byte {
	return []byte("raftexample node-id=" + strconv.FormatUint(id, 10))
}

func (rc *raftNode) openWAL() (err error) {
	if !wal.Exist(rc.cfg.waldir) {
		if err := mkdirDurable(filepath.Dir(rc.cfg.waldir)); err != nil {
			return fmt.Errorf("create data dir: %w", err)
		}
		w, err := wal.Create(rc.lg, rc.cfg.waldir, walMetadata(rc.cfg.id))
		if err != nil {
			return fmt.Errorf("create wal %s: %w", rc.cfg.waldir, err)
		}
		rc.wal = w
		if err := syncDir(rc.cfg.waldir); err != nil {
			return fmt.Errorf("create wal %s: %w", rc.cfg.waldir, err)
		}
		rc.newWAL = true
		rc.diskState = fmt.Sprintf("new wal %s, no snapshot", rc.cfg.waldir)
		return nil
	}

	// The state is decoded while the WAL is read: with 1M keys each takes
	// most of a second, and a restart waits for both. The newest snapshot
	// file that checks out is almost always the one to start from, so it
	// is decoded meanwhile, and the WAL is read from its record on
	// (readWALAt). When that cannot be shown to be the right start, every
	// WAL record is read for the snapshots it records, and the newest with
	// a sound file is used (the slow way, which also reports or repairs).
	guess := rc.newestSnapFile()
	if guess != nil {
		// The log since the snapshot is in memory too while it is replayed:
		// told only of the snapshot, the collector ran back to back as the
		// decode neared its size (1M keys: 5 collections in 0.3 s). From a
		// checkpoint (checkpoint.go), only the log after it is held: about
		// checkpointBytes at most. Told nothing until the scan had picked
		// the checkpoint, the collector ran 47 times in the first 0.9 s.
		walBytes := walBytesFrom(rc.cfg.waldir, guess.md.GetIndex())
		if rc.cfg.checkpointBytes > 0 {
			rc.expectReplay(uint64(guess.dataLen) + min(walBytes, rc.cfg.checkpointBytes))
		} else {
			rc.expectReplay(uint64(guess.dataLen) + walBytes)
		}
		guess.prefetch()
		if rc.cfg.checkpointBytes > 0 {
			if done, err := rc.openAtCheckpoint(guess); done || err != nil {
				if err != nil {
					guess.abandon()
				}
				return err
			}
			rc.expectReplay(uint64(guess.dataLen) + walBytes)
		}
		if w, meta, st, ents, ok := rc.readWALAt(guess); ok {
			rc.wal = w
			if err := rc.loadWAL(guess, nil, false, meta, st, ents, nil); err != nil {
				guess.abandon()
				return err
			}
			return nil
		}
	}
	walSnaps, err := wal.ValidSnapshotEntries(rc.lg, rc.cfg.waldir)
	if err != nil {
		guess.abandon()
		return rc.walDamaged(fmt.Errorf("list snapshots recorded in wal: %w", err))
	}
	snapFile, err := rc.loadNewestSnapshot(walSnaps, guess)
	if snapFile != guess {
		guess.abandon()
	}
	if err != nil {
		return fmt.Errorf("load snapshot from %s: %w", rc.cfg.snapdir, err)
	}
	start := walStart(snapFile)
	if snapFile != nil {
		rc.expectReplay(uint64(snapFile.dataLen))
		if snapFile != guess {
			snapFile.prefetch()
		}
		defer func() {
			if err != nil {
				snapFile.abandon()
			}
		}()
	}

	var (
		meta []byte
		st   *raftpb.HardState
		ents []*raftpb.Entry
	)
	for repaired := false; ; repaired = true {
		w, err := wal.Open(rc.lg, rc.cfg.waldir, start)
		if errors.Is(err, fileutil.ErrLocked) {
			return fmt.Errorf("data directory %s is in use by another running raftexample", rc.cfg.waldir)
		}
		if err != nil {
			return fmt.Errorf("open wal %s at snapshot %s: %w; if a newer snapshot file failed its checksum (see the warnings above and the *.broken files), the wal no longer reaches back to an older one: %s",
				rc.cfg.waldir, rc.snapName(start.GetTerm(), start.GetIndex()), err, rc.rebuildAdvice())
		}
		meta, st, ents, err = w.ReadAll()
		if err == nil {
			rc.wal = w
			break
		}
		w.Close()
		if errors.Is(err, wal.ErrSliceOutOfRange) {
			return rc.walGap(start, err)
		}
		if repaired || !errors.Is(err, io.ErrUnexpectedEOF) {
			return rc.walDamaged(err)
		}
		// etcd's decoder takes any frame that runs past the end of its
		// segment, or holds an all-zero sector, for a torn write, and
		// Repair truncates there. A torn write is the last thing in the
		// log: if whole records follow, a length field was damaged, and
		// truncating would throw away records that were synced.
		if seg, off, ok := recordsAfterTear(rc.cfg.waldir); ok {
			return rc.walDamaged(fmt.Errorf("%w: records follow the frame at byte %d of %s, so it is damage, not a torn write", err, off, seg))
		}
		rc.lg.Warn("wal ends in a torn write (crash during a write); repairing", zap.String("dir", rc.cfg.waldir))
		if !wal.Repair(rc.lg, rc.cfg.waldir) {
			return fmt.Errorf("repair wal %s: %w", rc.cfg.waldir, err)
		}
	}
	return rc.loadWAL(snapFile, walSnaps, true, meta, st, ents, nil)
}

// walStart is where the WAL is read from when the state starts at snap
// (nil: no snapshot, the beginning).
func walStart(snap *snapFileLayout) *walpb.Snapshot {
	if snap == nil {
		return &walpb.Snapshot{Index: new(uint64(0)), Term: new(uint64(0))}
	}
	return &walpb.Snapshot{Index: new(snap.md.GetIndex()), Term: new(snap.md.GetTerm())}
}

// readWALAt reads the WAL from the record of the snapshot in snap's file,
// and succeeds only if that is a snapshot the slow way (every record read
// for its snapshot records, wal.ValidSnapshotEntries, then the newest one
// with a sound file) would have picked: the WAL records it, with its term,
// and the hard state commits it. snap is the newest file and is sound
// (newestSnapFile), so no newer one could have been picked. Reading only
// from snap's record on halves what a restart decodes (1M keys and a log
// of half the store: 0.4–0.8 s less). The slow way also checks the
// records in segments older than the one that holds snap's record; those
// are neither replayed nor sent to followers, so damage there is found
// only when some start needs them. Anything else that goes wrong (a torn
// tail, damage, a file the WAL does not record or commit, the WAL locked
// by another process) leaves it to the slow way, which reports or repairs.
func (rc *raftNode) readWALAt(snap *snapFileLayout) (w *wal.WAL, meta []byte, st *raftpb.HardState, ents []*raftpb.Entry, ok bool) {
	if !walRecordsSnapshot(rc.cfg.waldir, snap.md.GetIndex(), snap.md.GetTerm()) {
		return nil, nil, nil, nil, false
	}
	start := walStart(snap)
	w, err := wal.Open(rc.lg, rc.cfg.waldir, start)
	if err != nil {
		return nil, nil, nil, nil, false
	}
	meta, st, ents, err = w.ReadAll()
	if err != nil || st.GetCommit() < snap.md.GetIndex() {
		w.Close()
		return nil, nil, nil, nil, false
	}
	return w, meta, st, ents, true
}

// loadWAL checks what the WAL and the snapshot file snap (nil: none) hold
// and loads them into raft's log. scanned says the whole WAL was read for
// the snapshots it records (walSnaps), not just from snapFile's record on.
// cp, if not nil, is the log from the snapshot to the checkpoint the WAL
// was opened at: ents follow it, and it is read back at start (only ents
// are held in memory, so only they count toward the heap expected).
func (rc *raftNode) loadWAL(snapFile *snapFileLayout, walSnaps []*walpb.Snapshot, scanned bool, meta []byte, st *raftpb.HardState, ents []*raftpb.Entry, cp *checkpointReplay) error {
	start := walStart(snapFile)
	if want := walMetadata(rc.cfg.id); string(meta) != string(want) {
		return fmt.Errorf("%w: %s holds %q, not %q", errWrongNode, rc.cfg.waldir, meta, want)
	}
	last := start.GetIndex()
	if cp != nil {
		last = cp.to
	}
	if len(ents) > 0 {
		last = ents[len(ents)-1].GetIndex()
	}
	if err := rc.checkDisk(start, st, last, walSnaps); err != nil {
		return err
	}

	rc.startApplied = start.GetIndex()
	if snapFile != nil {
		if err := rc.raftStorage.applySnapshot(&raftpb.Snapshot{Metadata: snapFile.md}); err != nil {
			return fmt.Errorf("load snapshot into raft log: %w", err)
		}
		rc.startSnap = snapFile
	}
	if cp != nil {
		if err := rc.raftStorage.addOnDisk(slices.Clone(cp.runs), cp.to); err != nil {
			return fmt.Errorf("load the log up to the wal checkpoint: %w", err)
		}
		rc.startApplied, rc.startReplay = cp.to, cp
	}
	if err := rc.raftStorage.SetHardState(st); err != nil {
		return fmt.Errorf("load hard state: %w", err)
	}
	if err := rc.raftStorage.Append(ents); err != nil {
		return fmt.Errorf("load wal entries: %w", err)
	}
	rc.startCommit = st.GetCommit()
	var replay uint64 // bytes of snapshot and log this start replays
	for _, e := range ents {
		replay += uint64(len(e.GetData()))
	}
	if snapFile != nil {
		replay += uint64(snapFile.dataLen)
	}
	rc.expectReplay(replay)
	var checkpoint uint64
	if cp != nil {
		checkpoint = cp.to
	}
	rc.lg.Info("replayed wal", zap.String("dir", rc.cfg.waldir), zap.Uint64("snapshot-index", start.GetIndex()),
		zap.Uint64("checkpoint", checkpoint), zap.Int("entries", len(ents)), zap.Uint64("term", st.GetTerm()), zap.Uint64("commit", st.GetCommit()),
		zap.Bool("whole-wal-scanned", scanned))
	return nil
}

// loadNewestSnapshot finds the newest snapshot file that the WAL records
// and that passes its checks, as etcd's Snapshotter.LoadNewestAvailable
// does, but reads each as a stream and keeps none of its state in memory.
// A file that fails is set aside as <name>.broken, as etcd does, and the
// next older one is tried. Nil when there is none. checked, if not nil,
// is a file already read and found sound (newestSnapFile): it is returned
// as it is if it is the one.
func (rc *raftNode) loadNewestSnapshot(walSnaps []*walpb.Snapshot, checked *snapFileLayout) (*snapFileLayout, error) {
	files, err := listSnapFiles(rc.cfg.snapdir)
	if err != nil {
		return nil, fmt.Errorf("list snapshot files: %w", err)
	}
	for _, f := range slices.Backward(files) {
		if !slices.ContainsFunc(walSnaps, func(s *walpb.Snapshot) bool { return s.GetIndex() == f.index && s.GetTerm() == f.term }) {
			continue
		}
		path := filepath.Join(rc.cfg.snapdir, f.name)
		if checked != nil && checked.path == path {
			return checked, nil
		}
		l, err := readSnapFile(path)
		if err == nil && (l.md.GetIndex() != f.index || l.md.GetTerm() != f.term) {
			err = fmt.Errorf("the file holds the snapshot at index %d, term %d", l.md.GetIndex(), l.md.GetTerm())
		}
		if err == nil {
			return l, nil
		}
		rc.lg.Warn("snap file is corrupt; setting it aside", zap.String("path", path), zap.Error(err))
		if rerr := os.Rename(path, path+".broken"); rerr != nil {
			return nil, fmt.Errorf("set aside the damaged snapshot file %s: %w", path, rerr)
		}
		rc.lg.Warn("renamed to a broken snap file", zap.String("path", path), zap.String("broken-path", path+".broken"))
	}
	return nil, nil
}

// expectReplay tells the GC tuner, if any, how much a restart replays.
func (rc *raftNode) expectReplay(encoded uint64) {
	if rc.cfg.expectHeap != nil {
		rc.cfg.expectHeap(encoded)
	}
}

// newestSnapFile is the newest snapshot file, if it checks out (framing,
// checksum, and the name's index and term), whether or not the WAL records
// it; nil otherwise. Nothing is renamed: loadNewestSnapshot decides.
func (rc *raftNode) newestSnapFile() *snapFileLayout {
	files, err := listSnapFiles(rc.cfg.snapdir)
	if err != nil || len(files) == 0 {
		return nil
	}
	f := files[len(files)-1]
	l, err := readSnapFile(filepath.Join(rc.cfg.snapdir, f.name))
	if err != nil || l.md.GetIndex() != f.index || l.md.GetTerm() != f.term {
		return nil
	}
	return l
}

// walDamaged explains a WAL that cannot be read (not a torn tail, which is
// repaired): it names the segment and the byte where its records stop
// verifying, and says what the operator can do. Nothing of such a WAL is
// used: a member must never serve data it cannot verify.
func (rc *raftNode) walDamaged(readErr error) error {
	where := "a segment that cannot be located"
	if path, off, err := locateWALDamage(rc.cfg.waldir); path != "" {
		where = fmt.Sprintf("segment %s at byte %d (%v)", path, off, err)
	}
	return fmt.Errorf("wal %s is damaged: %s; read error: %w; this member cannot verify its log and will not start: %s",
		rc.cfg.waldir, where, readErr, rc.rebuildAdvice())
}

// walGap explains a WAL whose entries do not follow on from the snapshot
// it was opened at. That happens when the newest snapshot failed its
// checksum (etcd's snap package set it aside as *.broken) and the member
// fell back to an older one, but the WAL does not reach back that far: a
// snapshot installed from the leader skipped the entries in between, or
// they were purged. Nothing on this disk holds the state in between.
func (rc *raftNode) walGap(start *walpb.Snapshot, readErr error) error {
	broken, _ := filepath.Glob(filepath.Join(rc.cfg.snapdir, "*.snap.broken"))
	from := "no snapshot"
	if start.GetIndex() > 0 {
		from = "snapshot " + rc.snapName(start.GetTerm(), start.GetIndex())
	}
	return fmt.Errorf("cannot rebuild the state: damaged snapshot files set aside %v; the wal %s does not follow on from the next older one (%s): %w; this member cannot verify its state and will not start: %s",
		broken, rc.cfg.waldir, from, readErr, rc.rebuildAdvice())
}

func (rc *raftNode) rebuildAdvice() string {
	return fmt.Sprintf("if the other members are healthy, remove this one (DELETE /%d on another member), wipe %s and %s, and add it back under a new id (POST /<new-id> with its peer URL, then start it with --join); keep the damaged files for a bug report",
		rc.cfg.id, rc.cfg.waldir, rc.cfg.snapdir)
}

// locateWALDamage decodes each WAL segment on its own (each begins with
// the CRC that chains it to the one before) and returns the first segment
// and byte offset whose record fails to decode or verify.
func locateWALDamage(dir string) (path string, off int64, err error) {
	names, err := fileutil.ListFiles(dir, func(n string) bool { return strings.HasSuffix(n, ".wal") })
	if err != nil {
		return "", 0, err
	}
	slices.Sort(names)
	for _, name := range names {
		if off, err := verifySegment(name); err != nil {
			return name, off, err
		}
	}
	return "", 0, nil
}

// recordsAfterTear finds the frame of the newest segment that does not
// decode and reports whether whole WAL records follow it: a chain of at
// least two frames, 8-byte aligned as the encoder writes them, each a
// record of a known type, ending where the written bytes end. Inside a
// torn write no such chain can be found (it is one partial record and then
// preallocated zeros).
func recordsAfterTear(dir string) (seg string, off int64, follow bool) {
	names, err := fileutil.ListFiles(dir, func(n string) bool { return strings.HasSuffix(n, ".wal") })
	if err != nil || len(names) == 0 {
		return "", 0, false
	}
	slices.Sort(names)
	seg = names[len(names)-1]
	off, err = verifySegment(seg)
	if err == nil {
		return "", 0, false
	}
	b, err := os.ReadFile(seg)
	if err != nil {
		return "", 0, false
	}
	end := len(b) // one past the last non-zero byte
	for end > 0 && b[end-1] == 0 {
		end--
	}
	for p := (off + 8 + 7) &^ 7; p+8 <= int64(end); p += 8 {
		if framesReachEnd(b, p, int64(end)) {
			return seg, off, true
		}
	}
	return seg, off, false
}

func framesReachEnd(b []byte, p, end int64) bool {
	n := 0
	for p < end {
		v := binary.LittleEndian.Uint64(b[p:])
		size, pad := int64(v&0x00ffffffffffffff), int64(0)
		if v>>63 == 1 {
			pad = int64(v>>56) & 0x7
		}
		if v == 0 || size > int64(len(b))-p-8-pad {
			return false
		}
		rec := &walpb.Record{}
		if proto.Unmarshal(b[p+8:p+8+size], rec) != nil || rec.GetType() < wal.MetadataType || rec.GetType() > wal.SnapshotType {
			return false
		}
		p += 8 + size + pad
		n++
	}
	return n >= 2
}

func verifySegment(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	dec := wal.NewDecoder(fileutil.NewFileReader(f))
	for {
		off := dec.LastOffset()
		rec := &walpb.Record{}
		err := dec.Decode(rec)
		switch {
		case errors.Is(err, io.EOF):
			return 0, nil
		case err != nil:
			return off, err
		case rec.GetType() == wal.CrcType:
			if crc := dec.LastCRC(); crc != 0 && rec.Validate(crc) != nil {
				return off, wal.ErrCRCMismatch
			}
			dec.UpdateCRC(rec.GetCrc())
		}
	}
}

// checkDisk compares what the WAL and the snapshot files say before raft
// sees them, so that a disagreement is reported in one line naming the
// files and indexes rather than as a raft panic. It also sets diskState,
// which a later raft panic quotes.
func (rc *raftNode) checkDisk(start *walpb.Snapshot, st *raftpb.HardState, last uint64, walSnaps []*walpb.Snapshot) error {
	files, err := listSnapFiles(rc.cfg.snapdir)
	if err != nil {
		return fmt.Errorf("list snapshot files: %w", err)
	}
	loaded := "no snapshot"
	if start.GetIndex() > 0 {
		loaded = "snapshot " + rc.snapName(start.GetTerm(), start.GetIndex())
	}
	rc.diskState = fmt.Sprintf("wal %s: hard state commit %d, entries up to %d after %s; snapshot files %s",
		rc.cfg.waldir, st.GetCommit(), last, loaded, describeSnapFiles(files))

	if st.GetCommit() > last {
		if broken, _ := filepath.Glob(filepath.Join(rc.cfg.snapdir, "*.snap.broken")); len(broken) > 0 {
			return fmt.Errorf("cannot rebuild the state: damaged snapshot files set aside %v, and what is left (%s) does not reach the commit index; this member cannot verify its state and will not start: %s",
				broken, rc.diskState, rc.rebuildAdvice())
		}
		return fmt.Errorf("wal and snapshots disagree: %s; the commit index is beyond the last entry, so a snapshot or wal segment this member relied on is missing or was not synced; remove this member (DELETE /%d on another member) and add it back with an empty data dir",
			rc.diskState, rc.cfg.id)
	}
	for _, f := range files {
		if f.index > start.GetIndex() {
			recorded := slices.ContainsFunc(walSnaps, func(s *walpb.Snapshot) bool { return s.GetIndex() == f.index })
			rc.lg.Warn("snapshot file is newer than the wal's durable state and is ignored (a crash while it was being saved)",
				zap.String("file", filepath.Join(rc.cfg.snapdir, f.name)), zap.Uint64("index", f.index),
				zap.Bool("valid-wal-record", recorded), zap.Uint64("wal-commit", st.GetCommit()), zap.String("loaded", loaded))
		}
	}
	return nil
}

func (rc *raftNode) snapName(term, index uint64) string {
	return filepath.Join(rc.cfg.snapdir, fmt.Sprintf("%016x-%016x.snap", term, index))
}

// persistSnapshot writes the snapshot file for md and body, then its WAL
// record, both fsynced before it returns. Caller holds snapMu.
func (rc *raftNode) persistSnapshot(md *raftpb.SnapshotMetadata, body snapshotBody) error {
	if err := writeSnapFile(rc.snapName(md.GetTerm(), md.GetIndex()), md, body); err != nil {
		return err
	}
	return rc.recordSnapshot(md)
}

// recordSnapshot makes the snapshot file for md, in place, durable, then
// records the snapshot in the WAL, synced. Caller holds snapMu.
func (rc *raftNode) recordSnapshot(md *raftpb.SnapshotMetadata) error {
	failpoint("snapshot-file-saved")
	if err := syncDir(rc.cfg.snapdir); err != nil {
		return fmt.Errorf("make the new snapshot file durable: %w", err)
	}
	if err := rc.wal.SaveSnapshot(&walpb.Snapshot{Index: new(md.GetIndex()), Term: new(md.GetTerm()), ConfState: md.GetConfState()}); err != nil {
		return fmt.Errorf("record snapshot in the wal: %w", err)
	}
	return nil
}

// releaseWAL lets go of WAL segments and snapshot files older than index,
// the snapshot just persisted, which a durable hard state commits. Caller
// holds snapMu.
func (rc *raftNode) releaseWAL(index uint64) {
	if err := rc.wal.ReleaseLockTo(index); err != nil {
		rc.lg.Warn("release wal segments", zap.Error(err))
	}
	// Segments are purged when the open WAL no longer locks them. A WAL
	// opened at a checkpoint (checkpoint.go) never locked the ones before
	// it, which hold the log from the start's snapshot to the checkpoint:
	// a snapshot taken before the checkpoint (while that log is read back
	// at start) leaves part of it for raft's followers, and for a restart.
	if index >= rc.startApplied {
		purgeWALFiles(rc.lg, rc.cfg.waldir, walFilesKept)
	}
	purgeSnapFiles(rc.lg, rc.cfg.snapdir, index, snapFilesKept)
	removeReceivedLeftovers(rc.lg, rc.cfg.snapdir, index, false)
	// Not needed for safety (a purged file that comes back after a power
	// cut is older than what the WAL uses), but it keeps such files from
	// piling up and confusing an operator.
	for _, dir := range []string{rc.cfg.waldir, rc.cfg.snapdir} {
		if err := syncDir(dir); err != nil {
			rc.lg.Warn("sync directory after purge", zap.String("dir", dir), zap.Error(err))
		}
	}
}

// purgeWALFiles removes all but the newest keep segments; segments still
// locked by the open WAL are kept.
func purgeWALFiles(lg *zap.Logger, dir string, keep int) {
	names, err := fileutil.ListFiles(dir, func(n string) bool { return strings.HasSuffix(n, ".wal") })
	if err != nil {
		lg.Warn("list wal segments to purge", zap.String("dir", dir), zap.Error(err))
		return
	}
	slices.Sort(names) // <seq>-<index>.wal, fixed-width hex: oldest first
	for _, path := range names[:max(0, len(names)-keep)] {
		l, err := fileutil.TryLockFile(path, os.O_WRONLY, fileutil.PrivateFileMode)
		if err != nil {
			return // still in use, and so is everything newer
		}
		err = os.Remove(path)
		l.Close()
		if err != nil {
			lg.Warn("purge wal segment", zap.String("path", path), zap.Error(err))
		}
	}
}

// purgeSnapFiles keeps the snapshot at durable and the keep-1 newest before
// it. Files after durable are left alone: they were written by a save that
// crashed before its WAL record or hard state was durable, and they go once
// a newer snapshot makes them old.
func purgeSnapFiles(lg *zap.Logger, dir string, durable uint64, keep int) {
	files, err := listSnapFiles(dir)
	if err != nil {
		lg.Warn("list snapshot files to purge", zap.String("dir", dir), zap.Error(err))
		return
	}
	files = slices.DeleteFunc(files, func(f snapFile) bool { return f.index > durable })
	for _, f := range files[:max(0, len(files)-keep)] {
		if err := os.Remove(filepath.Join(dir, f.name)); err != nil {
			lg.Warn("purge snapshot file", zap.String("path", filepath.Join(dir, f.name)), zap.Error(err))
		}
	}
}

// snapFile is a snapshot file named <term>-<index>.snap in hex, as etcd's
// snap package writes them.
type snapFile struct {
	name        string
	term, index uint64
}

// listSnapFiles returns the snapshot files in dir, oldest (lowest index)
// first. Files of other names (*.broken, temp files) are not listed.
func listSnapFiles(dir string) ([]snapFile, error) {
	names, err := fileutil.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var files []snapFile
	for _, n := range names {
		base, ok := strings.CutSuffix(n, ".snap")
		t, i, ok2 := strings.Cut(base, "-")
		if !ok || !ok2 || len(t) != 16 || len(i) != 16 {
			continue
		}
		term, err1 := strconv.ParseUint(t, 16, 64)
		index, err2 := strconv.ParseUint(i, 16, 64)
		if err1 == nil && err2 == nil {
			files = append(files, snapFile{name: n, term: term, index: index})
		}
	}
	slices.SortFunc(files, func(a, b snapFile) int {
		return cmp.Or(cmp.Compare(a.index, b.index), cmp.Compare(a.term, b.term))
	})
	return files, nil
}

// syncDir fsyncs directory dir, making the names created, renamed and
// removed in it durable.
func syncDir(dir string) error {
	d, err := fileutil.OpenDir(dir)
	if err != nil {
		return fmt.Errorf("open directory to sync: %w", err)
	}
	err = fileutil.Fsync(d)
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// mkdirDurable creates dir and any missing parents, fsyncing the parent of
// each directory it creates so that the new names survive a power cut.
func mkdirDurable(dir string) error {
	dir = filepath.Clean(dir)
	var missing []string // deepest first
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("stat %s: %w", d, err)
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if err := os.MkdirAll(dir, fileutil.PrivateDirMode); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := syncDir(filepath.Dir(missing[i])); err != nil {
			return err
		}
	}
	return nil
}

func describeSnapFiles(files []snapFile) string {
	if len(files) == 0 {
		return "(none)"
	}
	var b strings.Builder
	for i, f := range files {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s (index %d)", f.name, f.index)
	}
	return b.String()
}
