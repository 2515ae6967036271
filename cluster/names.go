package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Names are claimed in the bucket NamesBucket, one key each. A claim is a
// JetStream key-value create (atomic across the cluster) of the
// claimant's holder mark (the node's name and what on it claims), with a
// TTL: the
// holding node refreshes it (RefreshName) well within the TTL, so the
// names of a node that died expire by themselves. A release purges the
// key, leaving a marker that expires too.

var (
	// ErrNameTaken: another holder has the key.
	ErrNameTaken = errors.New("cluster: name taken")
	// ErrNameLost: a refresh found the key held by someone else (it had
	// expired while this node could not refresh it).
	ErrNameLost = errors.New("cluster: name held elsewhere")
)

// ClaimName creates key with holder as its value (the claimant's own
// mark: unique to it, so that its claims are told from everyone else's)
// and the given TTL (whole seconds, at least one). It returns the key's
// revision, or ErrNameTaken, or an error wrapping ErrNamesUnavailable when
// the claim could not be decided. A key that holder holds already is
// claimed, at its present revision: a claim whose answer was lost (made,
// but not known to be) is not refused to the one who made it when it
// tries again.
func (n *Node) ClaimName(ctx context.Context, key, holder string, ttl time.Duration) (uint64, error) {
	kv, err := n.Names()
	if err != nil {
		return 0, err
	}
	rev, err := kv.Create(ctx, key, []byte(holder), jetstream.KeyTTL(ttl))
	switch {
	case err == nil:
		return rev, nil
	case errors.Is(err, jetstream.ErrKeyExists):
		// Create tells a released key from a held one by reading it
		// back, and that read may be answered by a replica that has not
		// applied a release just made on another node: ask the stream's
		// leader before saying taken.
		return n.claimReleased(ctx, key, holder, ttl)
	}
	return 0, n.unavailable(err)
}

// lastRevision is key's last revision as the bucket's stream leader has
// it: its sequence, its value, and whether it marks the key released (a
// purge or delete, or a TTL's expiry marker). A key with no revision at
// all (its last marker expired) has sequence 0.
func (n *Node) lastRevision(ctx context.Context, key string) (seq uint64, value []byte, released bool, err error) {
	req, err := json.Marshal(struct {
		LastFor string `json:"last_by_subj"`
	}{n.keySubject(key)})
	if err != nil {
		return 0, nil, false, err
	}
	// The stream API's message get, unlike the direct get, is answered
	// by the leader only.
	reply, err := n.nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET.KV_"+NamesBucket, req)
	if err != nil {
		return 0, nil, false, n.unavailable(err)
	}
	var resp struct {
		Message *struct {
			Seq     uint64 `json:"seq"`
			Headers []byte `json:"hdrs"`
			Data    []byte `json:"data"`
		} `json:"message"`
		Error *struct {
			Code        int    `json:"code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return 0, nil, false, n.unavailable(fmt.Errorf("names bucket: reading %s: %w", key, err))
	}
	switch {
	case resp.Error != nil && resp.Error.Code == 404:
		return 0, nil, true, nil
	case resp.Error != nil:
		return 0, nil, false, n.unavailable(fmt.Errorf("names bucket: reading %s: %s", key, resp.Error.Description))
	case resp.Message == nil:
		return 0, nil, false, n.unavailable(fmt.Errorf("names bucket: reading %s: an empty answer", key))
	}
	return resp.Message.Seq, resp.Message.Data, releaseMarker(resp.Message.Headers), nil
}

// keySubject is the subject of key's revisions in the bucket's stream.
func (n *Node) keySubject(key string) string { return "$KV." + NamesBucket + "." + key }

// claimReleased claims key if its last revision, as the bucket's stream
// leader has it, is a release, with that revision as the one expected;
// the revision itself if holder holds it; ErrNameTaken if another does.
func (n *Node) claimReleased(ctx context.Context, key, holder string, ttl time.Duration) (uint64, error) {
	last, value, released, err := n.lastRevision(ctx, key)
	if err != nil {
		return 0, err
	}
	if !released {
		if string(value) == holder {
			return last, nil
		}
		return 0, ErrNameTaken
	}
	m := &nats.Msg{Subject: n.keySubject(key), Data: []byte(holder), Header: nats.Header{}}
	ack, err := n.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(last), jetstream.WithMsgTTL(ttl))
	if err == nil {
		return ack.Sequence, nil
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return 0, ErrNameTaken // claimed by another node meanwhile
	}
	return 0, n.unavailable(err)
}

// ReleaseHeldBy purges key if holder holds it (by the stream leader's
// account): how a claimant frees a claim whose answer it never had.
// Anyone else's key is left alone.
func (n *Node) ReleaseHeldBy(ctx context.Context, key, holder string) error {
	if _, err := n.Names(); err != nil {
		return err
	}
	last, value, released, err := n.lastRevision(ctx, key)
	if err != nil || released || string(value) != holder {
		return err
	}
	return n.ReleaseName(ctx, key, last)
}

// releaseMarker reports whether a revision's headers (NATS header block)
// mark the key released: a purge or delete, or the server's marker when
// a key's TTL ran out.
func releaseMarker(block []byte) bool {
	if len(block) == 0 {
		return false
	}
	h, err := nats.DecodeHeadersMsg(block)
	if err != nil {
		return false
	}
	switch h.Get("KV-Operation") {
	case "DEL", "PURGE":
		return true
	}
	switch h.Get(jetstream.MarkerReasonHeader) {
	case "MaxAge", "Purge", "Remove":
		return true
	}
	return false
}

// RefreshName writes key again, only if rev is still its revision, with
// a fresh TTL, and returns the new revision. When the key has expired
// meanwhile it is claimed again; when someone else holds it now, the
// error is ErrNameLost.
func (n *Node) RefreshName(ctx context.Context, key, holder string, rev uint64, ttl time.Duration) (uint64, error) {
	if _, err := n.Names(); err != nil {
		return 0, err
	}
	// KeyValue.Update would drop the key's TTL: publish the revision
	// ourselves, with it.
	m := &nats.Msg{Subject: n.keySubject(key), Data: []byte(holder), Header: nats.Header{}}
	ack, err := n.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(rev), jetstream.WithMsgTTL(ttl))
	if err == nil {
		return ack.Sequence, nil
	}
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || (apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence &&
		apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return 0, n.unavailable(err)
	}
	// Not our revision any more: expired (claim it again), taken, or
	// moved on by a write of ours whose answer was lost (ClaimName gives
	// it back).
	rev, err = n.ClaimName(ctx, key, holder, ttl)
	if errors.Is(err, ErrNameTaken) {
		return 0, ErrNameLost
	}
	if err != nil {
		return 0, err
	}
	// A revision given back was written a refresh ago, its TTL running
	// since: write it again, or the key could expire before the next
	// refresh. Should that write fail, the claim still holds until then.
	m.Header = nats.Header{}
	if ack, err := n.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(rev), jetstream.WithMsgTTL(ttl)); err == nil {
		return ack.Sequence, nil
	}
	return rev, nil
}

// ReleaseName purges key if rev is still its revision (a key someone else
// holds now is left alone).
func (n *Node) ReleaseName(ctx context.Context, key string, rev uint64) error {
	kv, err := n.Names()
	if err != nil {
		return err
	}
	err = kv.Purge(ctx, key, jetstream.LastRevision(rev), jetstream.PurgeTTL(markerTTL))
	if err == nil || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return nil
	}
	return n.unavailable(err)
}

// unavailable wraps err in ErrNamesUnavailable; when no stream answered,
// the bucket is bound again (a NATS server that restarted without it).
func (n *Node) unavailable(err error) error {
	if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrBucketNotFound) {
		n.NamesLost()
	}
	return fmt.Errorf("%w: %w", ErrNamesUnavailable, err)
}

// Token escapes s for use as one token of a NATS subject or key-value
// key: letters, digits, '-' and '_' stay; every other byte becomes =XX
// (upper-case hex). Distinct strings give distinct tokens, and the common
// ones ("lobby", "bob") read as themselves.
func Token(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('=')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	if b.Len() == 0 {
		return "="
	}
	return b.String()
}
