/*
 * hsm.h: the runtime of hsmemu's PKCS#11 module, shared by the hand-written
 * sources in cryptoki/module and the stubs cmd/p11gen generates.
 *
 * A generated stub checks the library state (hsm_entry), validates its
 * arguments, encodes them into an hsm_call's request (hsm_put_*), runs the
 * call (hsm_call_run) and decodes the reply (hsm_get_*) into its outputs.
 * The wire format is docs/protocol.md.
 */
#ifndef HSMEMU_HSM_H
#define HSMEMU_HSM_H

#include <endian.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "p11compat.h"

#define HSM_EXPORT __attribute__((visibility("default")))

/* Limits of docs/protocol.md. */
#define HSM_MAX_FRAME (16u << 20)      /* bytes after a frame's length */
#define HSM_MAX_BYTES (16u << 20)      /* one bytes value */
#define HSM_MAX_ULONGS (1u << 20)      /* items of one ulongs value */
#define HSM_MAX_TEMPLATE 4096u         /* attributes of one template or query */
#define HSM_MAX_NESTING 1              /* a template may hold templates, they may not */
#define HSM_NULL32 0xFFFFFFFFu         /* length or count meaning NULL */
#define HSM_UNAVAILABLE64 UINT64_MAX   /* CK_UNAVAILABLE_INFORMATION on the wire */

/* ---- state.c: initialisation, fork generations ---- */

/* hsm_entry is the first thing every entry point but C_Initialize,
 * C_GetFunctionList, C_GetInterfaceList and C_GetInterface does: CKR_OK when
 * the library is initialised in this process, CKR_CRYPTOKI_NOT_INITIALIZED
 * otherwise (including in a forked child that has not called C_Initialize). */
CK_RV hsm_entry(void);

/* hsm_epoch is the number of the current initialisation; it changes at every
 * C_Initialize and C_Finalize. A call that sees it change while it waits
 * gives up with CKR_CRYPTOKI_NOT_INITIALIZED. */
unsigned long hsm_epoch(void);

/* hsm_gate_enter says whether the library is still initialised in epoch e
 * and, when it is (1), counts the caller in until hsm_gate_leave: C_Finalize
 * frees the tables' mutexes only once no thread is inside, so a call that
 * races it (a C_WaitForSlotEvent) may lock one between the two. Never held
 * across I/O. */
int hsm_gate_enter(unsigned long e);
void hsm_gate_leave(void);

/* The application id of this initialisation (16 bytes). */
const uint8_t *hsm_app_id(void);

/* ---- lock.c: the mutex CK_C_INITIALIZE_ARGS asks for ---- */

typedef struct hsm_mutex hsm_mutex;
CK_RV hsm_locking_configure(const CK_C_INITIALIZE_ARGS *args);
CK_RV hsm_mutex_new(hsm_mutex **m);
void hsm_mutex_free(hsm_mutex *m);
void hsm_mutex_abandon(hsm_mutex *m);
void hsm_lock(hsm_mutex *m);
void hsm_unlock(hsm_mutex *m);

/* ---- config.c: where the daemon is ---- */

typedef struct hsm_config {
	char socket[108];   /* sun_path; empty when no usable path was found */
	int timeout_ms;     /* how long a call waits for its reply; 0: forever */
	/* Remote daemons (tls.c): "tls://HOST:PORT, ..." when set, instead
	 * of the socket; the client certificate, its key and the CA bundle
	 * that verifies the daemons; where errors go. */
	char server[1024];
	char tls_cert[1024], tls_key[1024], tls_ca[1024];
	int ring;           /* offer the daemon shared-memory rings (ring.c) */
} hsm_config;

/* hsm_config_load resolves the socket path (HSMEMU_SOCKET, the
 * configuration file, the default) into cfg. It never fails: an unusable
 * path leaves cfg->socket empty and the module acts as if no daemon ran. */
void hsm_config_load(hsm_config *cfg);
const hsm_config *hsm_config_get(void);
/* hsm_log_note writes one line for people where module.conf's "log" says:
 * stderr (the default), syslog, or nowhere. */
void hsm_log_note(const char *msg);

/* ---- buf.c: encoding and decoding ---- */

typedef struct hsm_wbuf {
	uint8_t *p;
	size_t len, cap;
	CK_RV err;          /* first error while encoding; CKR_OK otherwise */
	/* The call's answer to arguments too long to carry (calls.TooLarge,
	 * as the daemon's to a request over its bound); 0: CKR_ARGUMENTS_BAD. */
	CK_RV too_large;
	int strip;          /* mechanism parameters' byte strings as their lengths only */
	size_t prefetch_at; /* an outspec's presence byte asking for a prefetch (held.c); 0: none */
	size_t out_at;      /* where a prefetching call's outspec starts, NULL buffer or not */
	int prefetch_version; /* the protocol version from which the daemon knows that prefetch; 0: 3 */
} hsm_wbuf;

typedef struct hsm_rbuf {
	const uint8_t *p;
	size_t len, off;
	int bad;            /* the reply did not decode */
} hsm_rbuf;

/* hsm_free_wipe wipes n bytes at p (explicit_bzero), then frees p; NULL
 * is nothing. Every buffer that held request or reply bytes (PINs, key
 * values, plaintext) is freed through it, over its whole allocation, so
 * that freed heap and a core dump of the application keep none of them.
 * hsm_wbuf_free is the same for a request buffer, over its capacity. */
void hsm_free_wipe(void *p, size_t n);
void hsm_wbuf_free(hsm_wbuf *w);
void hsm_fail(hsm_wbuf *w, CK_RV rv);
void hsm_put_raw(hsm_wbuf *w, const void *p, size_t n);
void hsm_put_u8(hsm_wbuf *w, uint8_t v);
void hsm_put_u16(hsm_wbuf *w, uint16_t v);
void hsm_put_u32(hsm_wbuf *w, uint32_t v);
void hsm_put_u64(hsm_wbuf *w, uint64_t v);
/* bytes: NULL with a non-zero length fails with CKR_ARGUMENTS_BAD. */
void hsm_put_bytes(hsm_wbuf *w, const void *p, CK_ULONG n);
/* bytes inside a mechanism parameter: the same, but CKR_MECHANISM_PARAM_INVALID. */
void hsm_put_param_bytes(hsm_wbuf *w, const void *p, CK_ULONG n);
/* bytes inside a message parameter: a NULL pointer is NULL, whatever n. */
void hsm_put_msg_bytes(hsm_wbuf *w, const void *p, CK_ULONG n);
void hsm_put_outspec(hsm_wbuf *w, int present, CK_ULONG capacity);
/* The same for a call of calls.Prefetches: a NULL buffer asks for the
 * whole result (presence 2), which exchange.c turns back into a plain
 * NULL for a daemon older than version 3 (or prefetch_version). */
void hsm_put_outspec_prefetch(hsm_wbuf *w, int present, CK_ULONG capacity);

uint8_t hsm_get_u8(hsm_rbuf *r);
uint32_t hsm_get_u32(hsm_rbuf *r);
uint64_t hsm_get_u64(hsm_rbuf *r);
const uint8_t *hsm_get_raw(hsm_rbuf *r, size_t n);
void hsm_get_raw_into(hsm_rbuf *r, void *dst, size_t n);
/* A u64 that must be a CK_ULONG; HSM_UNAVAILABLE64 becomes CK_UNAVAILABLE_INFORMATION. */
CK_ULONG hsm_get_ulong(hsm_rbuf *r);
/* bytes: *isnull set for the NULL marker; *n bounded by HSM_MAX_BYTES. */
const uint8_t *hsm_get_bytes(hsm_rbuf *r, uint32_t *n, int *isnull);
/* hsm_get_end: the reply decoded and nothing is left over. */
int hsm_get_end(const hsm_rbuf *r);

static inline uint64_t hsm_be64(const uint8_t *p)
{
	return ((uint64_t)p[0] << 56) | ((uint64_t)p[1] << 48) | ((uint64_t)p[2] << 40) |
	       ((uint64_t)p[3] << 32) | ((uint64_t)p[4] << 24) | ((uint64_t)p[5] << 16) |
	       ((uint64_t)p[6] << 8) | (uint64_t)p[7];
}

static inline uint32_t hsm_be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* The stores are one byte swap and one unaligned store each: written
 * byte by byte, as a loop, they took some fifty instructions, and a call
 * encodes a dozen numbers. */
static inline void hsm_put_be64(uint8_t *p, uint64_t v)
{
	v = htobe64(v);
	memcpy(p, &v, sizeof v);
}

static inline void hsm_put_be32(uint8_t *p, uint32_t v)
{
	v = htobe32(v);
	memcpy(p, &v, sizeof v);
}

/* hsm_fits_ulong: v is representable as a host CK_ULONG. */
static inline int hsm_fits_ulong(uint64_t v)
{
	return (uint64_t)(CK_ULONG)v == v;
}

/* ---- outputs under the size-query convention (buf.c) ---- */

typedef struct hsm_outbytes {
	uint64_t len;           /* the length the daemon reports */
	const uint8_t *data;    /* the data, or NULL when only the length came */
	uint32_t n;
} hsm_outbytes;

void hsm_get_outbytes(hsm_rbuf *r, hsm_outbytes *o);
/* The reply fits what the caller asked: buf and cap are the caller's, rv
 * the reply's (CKR_OK to a buffer needs the data). */
int hsm_outbytes_ok(const hsm_outbytes *o, const void *buf, CK_ULONG cap, CK_RV rv);
void hsm_outbytes_commit(const hsm_outbytes *o, void *buf, CK_ULONG_PTR len);

typedef struct hsm_outulongs {
	uint64_t count;         /* the count the daemon reports */
	const uint8_t *items;   /* count x u64, or NULL when only the count came */
	uint32_t n;
} hsm_outulongs;

void hsm_get_outulongs(hsm_rbuf *r, hsm_outulongs *o);
/* ulongs (no leading count), as C_FindObjects' reply. */
void hsm_get_ulongs(hsm_rbuf *r, hsm_outulongs *o);
int hsm_outulongs_ok(const hsm_outulongs *o, const void *list, CK_ULONG cap, CK_RV rv);
void hsm_outulongs_commit(const hsm_outulongs *o, CK_ULONG *list, CK_ULONG_PTR count);

/* ---- attrs.c: templates, queries, answers ---- */

enum { HSM_ATTR_BYTES, HSM_ATTR_ULONG, HSM_ATTR_BOOL, HSM_ATTR_ULONGS, HSM_ATTR_TEMPLATE };

void hsm_put_template(hsm_wbuf *w, const CK_ATTRIBUTE *t, CK_ULONG n);
void hsm_put_query(hsm_wbuf *w, const CK_ATTRIBUTE *t, CK_ULONG n);

/* hsm_answers: C_GetAttributeValue's reply. hsm_get_answers checks it
 * against the caller's template and the reply's rv without writing
 * anything; commit then
 * writes every attribute's length and value. */
typedef struct hsm_answers {
	hsm_rbuf at;            /* the reader positioned at the answers */
} hsm_answers;

void hsm_get_answers(hsm_rbuf *r, hsm_answers *a, const CK_ATTRIBUTE *t, CK_ULONG n, CK_RV rv);
/* commit returns the rv to report: rv, or CKR_BUFFER_TOO_SMALL when a value
 * nested in a template did not fit the caller's buffer. */
CK_RV hsm_answers_commit(const hsm_answers *a, CK_ATTRIBUTE *t, CK_ULONG n, CK_RV rv);

/* ---- generated (cmd/p11gen): attribute kinds, mechanisms, structures ---- */

int hsm_attr_kind(CK_ATTRIBUTE_TYPE type);
void hsm_put_mechanism(hsm_wbuf *w, const CK_MECHANISM *m);

/* ---- stats.c: calls and round trips, per initialisation ---- */

/* HSMEMU_MODULE_STATS at C_Initialize: "-" prints the counts to stderr at
 * C_Finalize, a path appends them to that file. */
void hsm_stats_init(void);
void hsm_stats_call(void);
void hsm_stats_trip(int ring); /* ring: it went through shared-memory rings */
void hsm_stats_report(void);

/* ---- offline.c: the answers while no daemon runs ---- */

CK_RV hsm_offline_slot_list(CK_BBOOL token_present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count);
CK_RV hsm_offline_slot_info(CK_SLOT_ID slot, CK_SLOT_INFO *info);
CK_RV hsm_offline_slot(CK_SLOT_ID slot);
CK_RV hsm_offline_wait(CK_FLAGS flags);

/* ---- the way to the daemon: five files in layers ----
 *
 *   call.c      one call: role, deferred Init ahead, rv of a failed exchange
 *   held.c      results the daemon gave ahead of the follow-up call
 *   defer.c     deferred Inits: which to hold, which to carry, the flush
 *   exchange.c  one or two frames on a pooled connection, replies checked
 *   pool.c      the connections: take, give back, dial
 *   conn.c      one connection: dial and hello, send, receive
 *
 * Each calls only files below it, not only the next one (call.c sends
 * through exchange.c; defer.c registers its hook with pool.c). The one way
 * up is that hook (hsm_pool_on_fresh). hsm_call is declared before defer.c
 * because defer.c reads a call's role, not because it calls call.c.
 * test/check-layers.sh checks the object files' symbols.
 */

/* ---- tls.c: TLS 1.3 to remote daemons, below conn.c ----
 * A TLS connection is known by its socket's descriptor: conn.c asks
 * whether a descriptor is one (hsm_tls_is) and then reads and writes
 * through it. The I/O functions act like recv and send: -1 with errno
 * EAGAIN when the socket must wait, 0 at the end of the stream. */
int hsm_tls_servers(void);           /* servers configured; 0: the Unix socket */
int hsm_tls_current(void);           /* the server dials try first */
void hsm_tls_set_current(int i);
enum hsm_io hsm_tls_connect(int i, long long deadline_ms, int *fd);
int hsm_tls_is(int fd);
long hsm_tls_send(int fd, const uint8_t *p, size_t n);
long hsm_tls_recv(int fd, uint8_t *p, size_t n);
int hsm_tls_pending(int fd);
void hsm_tls_close(int fd);
void hsm_tls_forget(int fd);         /* a forked child's: never touched again */
void hsm_tls_not_hsmemu(int i);      /* a hello reply that is not the daemon's */
void hsm_tls_refused(int i);         /* a hello refused */
void hsm_tls_finalize(void);         /* C_Finalize: free what no connection holds */
/* Around fork(), from state.c's handlers, after the tables' mutexes: the
 * child inherits the table of connections whole, and sets it aside. */
void hsm_tls_atfork_prepare(void);
void hsm_tls_atfork_parent(void);
void hsm_tls_atfork_child(void);

/* ---- conn.c and pool.c: connections to the daemon ---- */

typedef struct hsm_conn hsm_conn;

enum hsm_io {
	HSM_IO_OK,
	HSM_IO_UNAVAILABLE,     /* no daemon: connect failed or the hello was refused */
	HSM_IO_BROKEN,          /* EOF, reset, broken pipe: CKR_DEVICE_REMOVED */
	HSM_IO_MALFORMED,       /* the peer broke the protocol: CKR_DEVICE_ERROR */
	HSM_IO_TIMEOUT,         /* no reply in time: CKR_DEVICE_ERROR */
	HSM_IO_FINALIZED,       /* C_Finalize ran meanwhile */
	HSM_IO_NOMEM,
	HSM_IO_STALE,           /* a deferred Init for an application the daemon no longer has */
};

/* conn.c */
/* hsm_conn_init forgets a version 1 daemon met before (C_Initialize). */
void hsm_conn_init(void);
/* hsm_conn_dial: *fresh says the daemon holds nothing of this
 * application from before (no sessions, no logins). */
enum hsm_io hsm_conn_dial(int *fd, int *fresh, int *version);
enum hsm_io hsm_conn_send(int fd, const uint8_t *p, size_t n, unsigned long epoch);
/* hsm_conn_recv_frames reads n reply frames (each after its length),
 * frames[i] an allocation of exactly lens[i] bytes. */
enum hsm_io hsm_conn_recv_frames(int fd, int n, uint8_t **frames, uint32_t *lens, int timeout_ms,
				 unsigned long epoch);
int hsm_conn_stale(int fd);
/* hsm_conn_close closes a connection (a TLS one without close_notify, so
 * a forked child's copy never ends its parent's); hsm_conn_forget closes
 * an inherited one without touching its TLS state. */
void hsm_conn_close(int fd);
void hsm_conn_forget(int fd);

/* ring.c: the shared-memory transport, below conn.c. A ring is known by
 * its connection's socket descriptor, as a TLS connection is. */
enum hsm_io hsm_ring_offer(int fd, long long deadline_ms); /* OK: taken or declined */
int hsm_ring_is(int fd);
enum hsm_io hsm_ring_send(int fd, const uint8_t *p, size_t n, long long deadline_ms, unsigned long epoch);
enum hsm_io hsm_ring_recv(int fd, uint8_t *p, size_t min, size_t cap, size_t *got, long long deadline_ms,
			  unsigned long epoch);
int hsm_ring_pending(int fd);       /* reply bytes no request asked for */
void hsm_ring_close(int fd);        /* unmap; before the socket is closed */
void hsm_ring_forget(int fd);       /* an inherited one: never touched */
void hsm_ring_atfork_child(void);   /* a forked child has no rings */

/* pool.c */
struct hsm_conn {
	int fd;
	uint32_t next_id;
	unsigned long epoch;
	int state;
	long long idle_since; /* CLOCK_MONOTONIC ns when it last became idle */
	int version;          /* the protocol version it speaks */
};

CK_RV hsm_pool_init(void);
void hsm_pool_finalize(void);
void hsm_pool_forget_inherited(void);
void hsm_pool_atfork_child(void);
/* Around fork(), from state.c's handlers: each table's mutex is taken
 * before the fork, so the child inherits its table whole, never half
 * changed by a thread that does not exist there (its C_Initialize frees
 * what the table holds). The parent lets go after; the child's copies
 * stay locked and are abandoned. */
void hsm_pool_atfork_prepare(void);
void hsm_pool_atfork_parent(void);
enum hsm_io hsm_pool_get(hsm_conn **c);
void hsm_pool_put(hsm_conn *c, int reusable);
/* hsm_pool_on_fresh registers what to run when a dial's hello says the
 * daemon holds nothing of this application from before: the pool's one
 * way to tell the layers above (defer.c registers at C_Initialize). It
 * runs under the pool's dial lock, before the new connection carries a
 * call and before any other dial. */
void hsm_pool_on_fresh(void (*fn)(unsigned long epoch));

/* ---- exchange.c: frames and their replies on one pooled connection ---- */

#define HSM_EXCHANGE_MAX 3 /* an owed C_SessionCancel, a deferred Init, the call */

/* hsm_exchange sends n request frames (headers reserved, as hsm_call_init
 * makes them) in one write on one connection and reads their n replies.
 * For each: rv, idle and, when it has results, the reply frame (after its
 * length) in replies[i], lens[i] bytes, which the caller frees with
 * hsm_free_wipe; NULL otherwise. A request
 * held for the daemon's application app_gen (0: any) is not sent to a
 * later one: HSM_IO_STALE. */
enum hsm_io hsm_exchange(hsm_wbuf **reqs, int n, CK_RV *rv, int *idle, uint8_t **replies,
			 uint32_t *lens, int timeout_ms, unsigned long app_gen);
/* The daemon's application generation that hsm_exchange checks: defer.c
 * reads it when it hands out a held Init, and moves it on when the daemon's
 * application starts afresh and whenever it drops its whole table. */
unsigned long hsm_exchange_app_gen(void);
void hsm_exchange_app_next(void);

/* ---- call.c: one call to the daemon ---- */

typedef struct hsm_call {
	hsm_wbuf req;           /* the request frame, header first */
	uint8_t *reply;         /* the reply frame (after its length) */
	uint32_t reply_len;     /* its length, all of its allocation */
	hsm_rbuf res;           /* the results, when has_results */
	CK_RV rv;               /* the daemon's rv, or the local failure */
	int has_results;
	int idle;               /* the reply's idle flag */
	int timeout_ms;         /* how long to wait for the reply; 0: forever */

	/* What the call is to deferred Inits (defer.c), from calls.RoleOf. */
	int on_session;         /* the first argument is a session: */
	uint64_t session;       /* this one */
	unsigned starts;        /* an Init of these operation kinds */
	unsigned continues;     /* carries on an operation of these kinds */
	int mutates;            /* may destroy or change objects, end logins or sessions */
	int closes;             /* ends its session */
	hsm_wbuf shape;         /* an Init's mechanism (byte strings as lengths) and key */

	/* A call that continues an operation ends it when it fails in the
	 * module (5.2): C_SessionCancel, call number cancel_call, with these
	 * flags. 0: the call continues none. */
	uint32_t cancel_call;
	uint64_t cancel_flags;

	/* A prefetch (held.c): the reply's idle flag, which then leaves out
	 * the operation whose result came in full; the call's number on its
	 * session in defer.c and in held.c; the daemon's application its
	 * reply came from. */
	int idle_but;
	/* The prefetching call's operation goes on after the follow-up (an
	 * Update, a message part before the last): handing the result over
	 * owes the daemon a C_SessionCancel with calls.CollectUpdate instead
	 * of one that ends the operation (or the message). */
	int goes_on;
	unsigned long defer_seq;
	unsigned long held_seq;
	unsigned long held_gen;
	/* held.c's count of mutating calls begun and ended when the call
	 * began; a mutating call counted there, and the hsm_epoch() it was
	 * counted in. */
	unsigned long held_mgen;
	int held_mut;
	unsigned long held_epoch;
} hsm_call;

enum hsm_outcome {
	HSM_REPLIED,            /* the daemon answered: rv, has_results, res */
	HSM_OFFLINE,            /* no daemon: the stub gives its offline answer */
	HSM_FAILED,             /* a local failure: rv says which */
};

void hsm_call_init(hsm_call *c, uint32_t call);
/* hsm_call_shape records an Init's mechanism for defer.c's memory of
 * accepted Inits; the stub then adds the key handle to c->shape. */
void hsm_call_shape(hsm_call *c, const CK_MECHANISM *m);
enum hsm_outcome hsm_call_run(hsm_call *c);
void hsm_call_end(hsm_call *c);
/* hsm_call_cancel sends C_SessionCancel(session, flags), call number call,
 * for operations of kinds: what an Init with a NULL mechanism does (it
 * ends its operation, 3.0), a held Init of them included. Its rv. */
CK_RV hsm_call_cancel(CK_SESSION_HANDLE session, uint32_t call, unsigned kinds, uint64_t flags);
/* hsm_call_abandon ends the operations of a call the module refused
 * before sending it (a NULL length pointer, say): every error but
 * CKR_BUFFER_TOO_SMALL ends the operation (5.2). Returns rv. */
CK_RV hsm_call_abandon(CK_SESSION_HANDLE session, uint32_t call, unsigned kinds, uint64_t flags, CK_RV rv);

/* ---- held.c: results ahead of the follow-up call ---- */

/* calls.CollectUpdate and calls.CollectKinds: C_SessionCancel's flags
 * for an Update's output handed over, the operations in bits 32 to 59. */
#define HSM_COLLECT_UPDATE (1ULL << 62)
#define HSM_COLLECT_KINDS (0x0fffffffULL << 32)

/* hsm_held_side: what a message call's parameter gets back with its
 * output (calls.MsgParamOut: the IV the token made, the tag), which a
 * held result keeps beside the output: up to HSM_HELD_SIDES byte
 * strings, each written back (set) or not. In a stub's hsm_msgparam they
 * alias the reply; from hsm_held_serve they are a copy (own), which
 * hsm_held_side_release wipes and frees. */
#define HSM_HELD_SIDES 4
typedef struct hsm_held_side {
	const uint8_t *p[HSM_HELD_SIDES];
	uint32_t n[HSM_HELD_SIDES];
	int set[HSM_HELD_SIDES];
	uint8_t *own;
	size_t own_len;
} hsm_held_side;

CK_RV hsm_held_init(void);
void hsm_held_finalize(void);
void hsm_held_forget_inherited(void);
/* In a forked child, at once: the parent's results are wiped. */
void hsm_held_atfork_child(void);
void hsm_held_atfork_prepare(void); /* as hsm_pool_atfork_prepare */
void hsm_held_atfork_parent(void);
/* hsm_held_serve, before a prefetching call runs: when the module holds
 * its result for the same arguments (the input included), answers it
 * under the size-query convention (*rv) and returns 1; a result handed
 * over is wiped, and the operation it ended is ended in the daemon with
 * the session's next frame (defer.c), or for an Update (goes_on) the
 * daemon hears there that its kept output was collected. A held result for other arguments
 * is wiped, and the call goes to the daemon (0). For a message call, side
 * (else NULL) gets what the parameter gets back when the output is handed
 * over: the caller writes it back, then releases it. */
int hsm_held_serve(hsm_call *c, CK_BYTE_PTR out, CK_ULONG_PTR out_len, CK_RV *rv, hsm_held_side *side);
/* hsm_held_keep, after its reply decoded: a result that came in full for
 * a NULL buffer is kept when ok (the reply decoded exactly and, for a
 * message call, its side fits the caller's parameter) and the call was
 * alone on its session, and is wiped from the reply either way (o then
 * carries only the length). A message call's side (else NULL) is kept
 * with it; either way none of it is left set, so the size query writes
 * nothing back. */
void hsm_held_keep(hsm_call *c, hsm_outbytes *o, const void *out, hsm_held_side *side, int ok);
void hsm_held_side_release(hsm_held_side *side);
/* hsm_held_begin and hsm_held_end, around every call that goes to the
 * daemon: a call on a session forgets what is held for it (the daemon's
 * state is the truth again), a mutating call forgets everything. */
void hsm_held_begin(hsm_call *c);
void hsm_held_end(hsm_call *c);

/* ---- defer.c: Inits that travel with the next call ---- */

/* The state of the deferred Inits of one call in flight. */
typedef struct hsm_carry {
	uint64_t cancel;        /* an owed C_SessionCancel's flags, sent ahead of the Init and the call; or 0 */
	uint32_t cancel_call;   /* its call number */
	uint8_t *init;          /* a deferred Init sent ahead of the call, or NULL */
	size_t init_len;
	size_t init_cap;        /* its allocation, wiped when it is freed */
	unsigned kind;          /* its operation kind */
	unsigned long app_gen;  /* the daemon's application it was held for */
	unsigned long gen;      /* the accepted Inits' generation when the call left */
	unsigned long epoch;    /* hsm_epoch() when the call left */
	unsigned long seq;      /* the call's number on its session */
	int skip;               /* the call touches no session and no object */
	int tracked;            /* its session has an entry in the table */
	int alone;              /* no other call was in flight on its session */
	int mutating;           /* a mutating call: nothing is held meanwhile */
} hsm_carry;

CK_RV hsm_defer_init(void);
void hsm_defer_finalize(void);
void hsm_defer_forget_inherited(void);
void hsm_defer_atfork_prepare(void); /* as hsm_pool_atfork_prepare */
void hsm_defer_atfork_parent(void);
/* hsm_defer_hold: c is an Init the daemon accepted before, on an idle
 * session; it is kept (c->req taken) to go with the session's next call.
 * 1 when held. */
int hsm_defer_hold(hsm_call *c);
/* hsm_defer_begin, before c is sent: a mutating call first sends every
 * held Init; a call on a session takes that session's held Init into k.
 * Returns CKR_OK, or the rv of a deferred Init that failed, which c,
 * continuing its operation, reports instead of being sent. */
CK_RV hsm_defer_begin(hsm_call *c, hsm_carry *k);
/* hsm_defer_end, after: replied says whether the replies came, init_rv is
 * the carried Init's. */
void hsm_defer_end(hsm_call *c, hsm_carry *k, int replied, CK_RV init_rv);
/* hsm_defer_collected: the module is handing over the held result of an
 * operation the daemon still keeps; C_SessionCancel(call, flags) goes
 * ahead of the session's next frame. When the prefetch's reply said the
 * session idle but for it (idle_but) and no call has begun on the session
 * since (seq, its defer_seq), the session is idle. 0, and nothing
 * recorded, when the session cannot be tracked (every entry holds a
 * session's state) or the daemon's application is no longer app_gen, the
 * result's: the caller then keeps the result back and lets the call go to
 * the daemon. */
int hsm_defer_collected(uint64_t session, uint32_t call, uint64_t flags, unsigned long seq, int idle_but,
			unsigned long app_gen);
/* hsm_defer_forget_failed forgets a deferred Init of kinds the daemon
 * refused and no call has reported yet: its operation is being ended, and
 * there is none. */
void hsm_defer_forget_failed(uint64_t session, unsigned kinds);

/* ---- local.c: the function lists (generated) ---- */

extern CK_FUNCTION_LIST hsm_function_list;
extern CK_FUNCTION_LIST_3_0 hsm_function_list_3_0;
extern CK_FUNCTION_LIST_3_2 hsm_function_list_3_2;
CK_RV hsm_GetInfo30(CK_INFO_PTR pInfo);
CK_RV hsm_GetInfo32(CK_INFO_PTR pInfo);

#endif /* HSMEMU_HSM_H */
