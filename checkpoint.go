package main

import (
	"fmt"
	"slices"
	"time"

	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// WAL checkpoints bound what a restart holds in memory.
//
// A restart after a crash replays the log since the newest snapshot, and
// the snapshot policy lets that log grow to half the store (snapshotDue).
// etcd's wal.ReadAll returns the whole log at once, so with 1M keys a
// member held ~136 MB of entries beside the ~400 MB store it was decoding:
// 2.7× the raw data at the peak. ReadAll starts at a snapshot record; so,
// every --wal-checkpoint-bytes of committed log, the ready loop appends a
// snapshot record to the WAL that has no snapshot file (a checkpoint) at
// the newest committed index X. A restart then reads the log up to X by
// itself, a record at a time, and hands it to the state machine as it
// goes (replayCheckpointed); it opens the WAL at X, so ReadAll holds only
// what follows X; and raft starts with X applied, reading (s, X] back from
// the WAL if a follower needs it, as it does for any evicted entry. On a
// 1M-key member killed with 107 MB of log, the start's peak went from
// 593-621 to 498-513 MiB, in about the same time (README, Performance).
//
// Why a checkpoint record is safe to start from:
//   - every entry up to X is in the WAL before the record: X is committed,
//     and raft hands out only entries this member has persisted (a Ready's
//     own entries are saved before the ready loop gets here), and the
//     record's write syncs the WAL, the hard state that commits X included;
//   - committed entries are never overwritten, so no later record changes
//     (s, X];
//   - the membership is the snapshot's: a checkpoint is written only while
//     no membership change was committed after the newest snapshot, and a
//     restart checks again that none is in (s, X] of the log it reads.
//
// The fallback is the old start: if the scan finds anything it does not
// expect (damage, a torn tail, no usable checkpoint), the WAL is opened at
// the snapshot and read whole, which reports or repairs as before. etcd's
// other readers skip the extra records: ReadAll matches only the record of
// the snapshot it opened at, and a snapshot record without a file is never
// loaded (loadNewestSnapshot looks for files).

// walCheckpoint is a checkpoint record's index and term.
type walCheckpoint struct{ index, term uint64 }

// maybeCheckpoint counts the bytes of committed entries and, once there
// are enough since the last checkpoint, records one at the newest
// committed index. Called by the ready loop after the Ready's entries
// were saved.
func (rc *raftNode) maybeCheckpoint(committed []*raftpb.Entry) {
	if rc.cfg.checkpointBytes == 0 || len(committed) == 0 {
		return
	}
	for _, e := range committed {
		rc.cpBytes += uint64(len(e.GetData()))
		if e.GetType() != raftpb.EntryNormal {
			rc.confIndex = e.GetIndex()
		}
	}
	if rc.cpBytes < rc.cfg.checkpointBytes {
		return
	}
	last := committed[len(committed)-1]
	md := rc.raftStorage.snapshotMeta()
	if rc.confIndex > md.GetIndex() || last.GetIndex() <= md.GetIndex() {
		return // until a snapshot holds the membership change; keep counting
	}
	cp := &walpb.Snapshot{Index: new(last.GetIndex()), Term: new(last.GetTerm()), ConfState: md.GetConfState()}
	if err := rc.wal.SaveSnapshot(cp); err != nil {
		rc.lg.Fatal("cannot write a checkpoint to the wal; stopping rather than risk losing acknowledged writes", zap.Error(err))
	}
	failpoint("wal-checkpoint-saved")
	rc.cpBytes = 0
	metricCheckpoints.Inc()
}

// walScan is what scanWAL learned of the log after a snapshot at from.
type walScan struct {
	// startRecorded says the WAL holds the record of the snapshot at from
	// with its term.
	startRecorded bool
	// runs has the term of each index in [from, last] as the log ends up
	// (records a later leader overwrote are overwritten here too).
	runs termRuns
	last uint64
	// confs are the indexes in (from, last] that hold membership changes.
	confs []uint64
	// checkpoints are the checkpoint (or snapshot) records after from, in
	// the order written.
	checkpoints []walCheckpoint
}

// scanWAL reads the WAL's records from the segment that holds the log at
// from, checking each record's CRC as etcd's decoder does, and keeps only
// each entry's index and term: a few bytes per leader term, however long
// the log. Any error (a torn tail included) ends the scan with it.
func scanWAL(dir string, from, fromTerm uint64) (*walScan, error) {
	segs, err := segmentsFrom(dir, from)
	if err != nil {
		return nil, fmt.Errorf("list wal segments: %w", err)
	}
	if len(segs) == 0 || segs[0].index > from {
		return nil, fmt.Errorf("no wal segment in %s reaches back to index %d", dir, from)
	}
	sc := &walScan{runs: termRuns{{index: from, term: fromTerm}}, last: from}
	var bad error
	for _, s := range segs {
		_, err := readSegmentRecords(s.path, func(recType int64, rec []byte) bool {
			switch recType {
			case wal.EntryType:
				typ, term, index, _, err := entryFields(rec)
				if err != nil {
					bad = err
					return false
				}
				if index <= from {
					return true
				}
				if index > sc.last+1 {
					bad = fmt.Errorf("entry %d follows %d: a gap", index, sc.last)
					return false
				}
				if index <= sc.last {
					sc.runs = sc.runs.truncate(index - 1)
					for len(sc.confs) > 0 && sc.confs[len(sc.confs)-1] >= index {
						sc.confs = sc.confs[:len(sc.confs)-1]
					}
				}
				sc.runs = sc.runs.add(index, term)
				sc.last = index
				if typ != raftpb.EntryNormal {
					sc.confs = append(sc.confs, index)
				}
			case wal.SnapshotType:
				snap := &walpb.Snapshot{}
				if err := proto.Unmarshal(rec, snap); err != nil {
					bad = fmt.Errorf("decode snapshot record: %w", err)
					return false
				}
				switch {
				case snap.GetIndex() == from && snap.GetTerm() == fromTerm:
					sc.startRecorded = true
				case snap.GetIndex() > from:
					sc.checkpoints = append(sc.checkpoints, walCheckpoint{index: snap.GetIndex(), term: snap.GetTerm()})
				}
			}
			return true
		})
		if bad != nil {
			return nil, fmt.Errorf("%s: %w", s.path, bad)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.path, err)
		}
	}
	return sc, nil
}

// newestCheckpoint is the newest checkpoint a restart can start from: in
// the log with its term, and no membership change between the snapshot
// and it.
func (sc *walScan) newestCheckpoint() (walCheckpoint, bool) {
	if !sc.startRecorded {
		return walCheckpoint{}, false
	}
	from := sc.runs[0].index
	for _, cp := range slices.Backward(sc.checkpoints) {
		if cp.index <= from || cp.index > sc.last || sc.runs.at(cp.index) != cp.term {
			continue
		}
		if len(sc.confs) > 0 && sc.confs[0] <= cp.index {
			continue
		}
		return cp, true
	}
	return walCheckpoint{}, false
}

// entryFields decodes a raftpb.Entry; data is a part of b, not a copy. The
// scan keeps only the type, term and index; logEntries (the read-back,
// and raft's reads of evicted entries) copies the data once, out of the
// read buffer that b is part of (readSegmentRecords). A proto.Unmarshal
// would copy it again, more garbage for the collector while the start
// applies the log (BenchmarkWALCheckpointRead: 196 -> 161 MB allocated
// per 32 MiB of log then, when etcd's decoder made two copies before it).
func entryFields(b []byte) (typ raftpb.EntryType, term, index uint64, data []byte, err error) {
	for len(b) > 0 {
		num, wt, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, 0, 0, nil, fmt.Errorf("decode entry: %w", protowire.ParseError(n))
		}
		if num > protowire.MaxValidNumber { // as proto.Unmarshal, which etcd's reader uses
			return 0, 0, 0, nil, fmt.Errorf("decode entry: field number %d out of range", num)
		}
		b = b[n:]
		if num == 4 && wt == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return 0, 0, 0, nil, fmt.Errorf("decode entry: %w", protowire.ParseError(n))
			}
			data = v[:len(v):len(v)]
			b = b[n:]
			continue
		}
		if wt == protowire.VarintType && num >= 1 && num <= 3 {
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return 0, 0, 0, nil, fmt.Errorf("decode entry: %w", protowire.ParseError(n))
			}
			b = b[n:]
			switch num {
			case 1:
				typ = raftpb.EntryType(v)
			case 2:
				term = v
			case 3:
				index = v
			}
			continue
		}
		n = protowire.ConsumeFieldValue(num, wt, b)
		if n < 0 {
			return 0, 0, 0, nil, fmt.Errorf("decode entry: %w", protowire.ParseError(n))
		}
		b = b[n:]
	}
	return typ, term, index, data, nil
}

// streamWALEntries reads the log's entries (from, to] back from the WAL in
// order (logEntries) and calls fn with them about chunkBytes of data at a
// time, until fn returns false. It fails if any entry is missing.
func streamWALEntries(dir string, from, to uint64, term func(uint64) uint64, chunkBytes uint64, fn func([]*raftpb.Entry) bool) error {
	var (
		chunk []*raftpb.Entry
		size  uint64
		stop  bool
	)
	flush := func() bool {
		if len(chunk) == 0 {
			return true
		}
		ok := fn(chunk)
		chunk, size = nil, 0
		return ok
	}
	next, err := logEntries(dir, from+1, term, func(e *raftpb.Entry) bool {
		chunk = append(chunk, e)
		size += uint64(len(e.GetData()))
		if size >= chunkBytes && !flush() {
			stop = true
			return false
		}
		return e.GetIndex() < to
	})
	if err != nil {
		return err
	}
	if stop {
		return nil
	}
	if next <= to {
		return fmt.Errorf("entry %d (term %d) not found in the wal %s", next, term(next), dir)
	}
	flush()
	return nil
}

// checkpointReplay is the log a start reads back from the WAL and applies
// before raft runs: (from, to], with the terms in runs.
type checkpointReplay struct {
	from, to uint64
	runs     termRuns
}

// openAtCheckpoint opens the WAL at its newest usable checkpoint after the
// snapshot in snap (checked, and the newest file), and loads the log. done
// is false, with no error and nothing open, when there is no such
// checkpoint or anything about it is not as the scan found it: the caller
// then starts the old way, which reports or repairs what is wrong.
func (rc *raftNode) openAtCheckpoint(snap *snapFileLayout) (done bool, err error) {
	from, fromTerm := snap.md.GetIndex(), snap.md.GetTerm()
	sc, err := scanWAL(rc.cfg.waldir, from, fromTerm)
	if err != nil {
		rc.lg.Info("wal not started from a checkpoint", zap.Error(err))
		return false, nil
	}
	cp, ok := sc.newestCheckpoint()
	if !ok {
		return false, nil
	}
	rc.expectReplay(uint64(snap.dataLen) + walBytesFrom(rc.cfg.waldir, cp.index))
	w, err := wal.Open(rc.lg, rc.cfg.waldir, &walpb.Snapshot{Index: new(cp.index), Term: new(cp.term)})
	if err != nil {
		return false, nil
	}
	meta, st, ents, err := w.ReadAll()
	if err == nil {
		err = sameLog(sc, cp, st, ents)
	}
	if err != nil {
		w.Close()
		rc.lg.Info("wal not started from a checkpoint", zap.Uint64("checkpoint", cp.index), zap.Error(err))
		return false, nil
	}
	rc.wal = w
	return true, rc.loadWAL(snap, nil, false, meta, st, ents, &checkpointReplay{from: from, to: cp.index, runs: sc.runs.truncate(cp.index)})
}

// sameLog checks that what ReadAll returned from the checkpoint cp on is
// the log the scan found, and that the hard state commits cp.
func sameLog(sc *walScan, cp walCheckpoint, st *raftpb.HardState, ents []*raftpb.Entry) error {
	if st.GetCommit() < cp.index {
		return fmt.Errorf("the hard state commits %d, before the checkpoint", st.GetCommit())
	}
	last := cp.index
	for _, e := range ents {
		if e.GetIndex() != last+1 || e.GetTerm() != sc.runs.at(e.GetIndex()) {
			return fmt.Errorf("entry %d (term %d) is not the scan's", e.GetIndex(), e.GetTerm())
		}
		last = e.GetIndex()
	}
	if last != sc.last {
		return fmt.Errorf("the log ends at %d, the scan's at %d", last, sc.last)
	}
	return nil
}

// replayCheckpointed reads the log up to the start's checkpoint back from
// the WAL and hands it to the state machine, a chunk at a time, after the
// snapshot and before raft's first Ready. False if the node is stopping.
func (rc *raftNode) replayCheckpointed(r *checkpointReplay) bool {
	start := time.Now()
	stopped := false
	err := streamWALEntries(rc.cfg.waldir, r.from, r.to, r.runs.at, replayChunkBytes, func(ents []*raftpb.Entry) bool {
		stopped = !rc.publish(nil, nil, ents, false)
		return !stopped
	})
	if stopped {
		return false
	}
	if err != nil {
		// raft was told these are applied; it cannot run without them. The
		// next start scans again and, finding the log short, opens the WAL
		// at the snapshot.
		rc.lg.Fatal("cannot read the log up to the wal checkpoint back", zap.Uint64("from", r.from), zap.Uint64("to", r.to), zap.Error(err))
	}
	rc.lg.Info("replayed the log up to the wal checkpoint", zap.Uint64("from", r.from), zap.Uint64("to", r.to), zap.Duration("took", time.Since(start)))
	return true
}

// replayChunkBytes is about how much log one hand-off to the state machine
// carries while a start reads the log up to its checkpoint. The reading
// runs ahead of the apply (which starts with the snapshot) by as many
// hand-offs as commitC holds: with 1 MiB chunks that was 64 MiB more heap
// at the start's peak.
const replayChunkBytes = 128 << 10
