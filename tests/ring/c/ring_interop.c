/*
 * ring_interop.c -- one step of a ring scenario, done with Xen's real macros.
 *
 * Written for xensim's tests/ring/test_c_interop.py. Each invocation loads a
 * 4096-byte page (and, for request/response rings, this end's private
 * indices) from files, performs ONE step with the RING_* macros / MASK_*_IDX
 * from the installed Xen public headers, prints one result line on stdout and
 * saves the page (and state) back. The Python test runs the same step script
 * with xensim's ring/ and compares result lines and page bytes; mixing a C end
 * with a Python end proves each consumes what the other produced.
 *
 *   ring_interop <proto> <role> <page> <state> <token>
 *     proto: blk | blkrw | nettx | netrx    role: front | back
 *            (state file: "start pvt cons"; blkrw = blkif with only direct
 *            READ/WRITE requests whose segment count changes every 16
 *            requests, the shape xensim's batch codec writes and reads by column)
 *       tokens  init:<start>   F<n> (front put n + push/check notify)
 *               R (front consume all + final check)
 *               B (back consume all, answer, push/check notify, final check)
 *               B<n> (back consume at most n, answer, push/check notify)
 *     proto: cons | xs            role: guest | daemon   (state file unused)
 *       tokens  init:<start>  W<n> (guest writes n)  R<n> (daemon reads <= n)
 *               I<n> (daemon writes n)  G<n> (guest reads <= n)
 *
 * Build: gcc -D__XEN_INTERFACE_VERSION__=0x00040e00 -o ring_interop ring_interop.c
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ring.h leaves the barriers to the includer. */
#define mb()  __sync_synchronize()
#define rmb() __sync_synchronize()
#define wmb() __sync_synchronize()
#define xen_mb()  mb()
#define xen_rmb() rmb()
#define xen_wmb() wmb()

#include <xen/xen.h>
#include <xen/io/ring.h>
#include <xen/io/blkif.h>
#include <xen/io/netif.h>
#include <xen/io/console.h>
#include <xen/io/xs_wire.h>

#define PAGE 4096
static unsigned char page[PAGE] __attribute__((aligned(PAGE)));
static uint32_t st_start, st_pvt, st_cons;

static void load(const char *path, void *buf, size_t n)
{
    FILE *f = fopen(path, "rb");
    if (!f || fread(buf, 1, n, f) != n) { fprintf(stderr, "cannot read %s\n", path); exit(2); }
    fclose(f);
}

static void save(const char *path, const void *buf, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(buf, 1, n, f) != n) { fprintf(stderr, "cannot write %s\n", path); exit(2); }
    fclose(f);
}

static void load_state(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f || fscanf(f, "%u %u %u", &st_start, &st_pvt, &st_cons) != 3) {
        fprintf(stderr, "cannot read state %s\n", path); exit(2);
    }
    fclose(f);
}

static void save_state(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) { fprintf(stderr, "cannot write %s\n", path); exit(2); }
    fprintf(f, "%u %u %u\n", st_start, st_pvt, st_cons);
    fclose(f);
}

/* ---------------------------------------------------------------- blkif */
static void blk_fill(void *slot, uint32_t i)
{
    /* request number i -> deterministic contents (mirrors the Python test) */
    if (i % 5 == 4) {
        struct blkif_request_discard d;
        memset(&d, 0, sizeof(d));
        d.operation = BLKIF_OP_DISCARD; d.flag = BLKIF_DISCARD_SECURE; d.handle = 51712;
        d.id = 0x1000 + i; d.sector_number = (1ULL << 40) + (uint64_t)i * 8;
        d.nr_sectors = 8ULL * i + 1;
        memcpy(slot, &d, sizeof(d));
    } else if (i % 7 == 6) {
        struct blkif_request_indirect r;
        memset(&r, 0, sizeof(r));
        r.operation = BLKIF_OP_INDIRECT; r.indirect_op = BLKIF_OP_WRITE; r.nr_segments = 12 + i;
        r.id = 0x1000 + i; r.sector_number = (1ULL << 40) + (uint64_t)i * 8; r.handle = 51712;
        for (unsigned j = 0; j < (r.nr_segments + 511u) / 512u; j++)
            r.indirect_grefs[j] = 2000 + 8 * i + j;
        memcpy(slot, &r, sizeof(r));
    } else {
        struct blkif_request r;
        memset(&r, 0, sizeof(r));
        r.operation = i % 2 ? BLKIF_OP_WRITE : BLKIF_OP_READ; r.nr_segments = 1 + i % 11;
        r.handle = 51712; r.id = 0x1000 + i; r.sector_number = (1ULL << 40) + (uint64_t)i * 8;
        for (unsigned k = 0; k < r.nr_segments; k++) {
            r.seg[k].gref = 1000 + 16 * i + k; r.seg[k].first_sect = k % 8; r.seg[k].last_sect = 7;
        }
        memcpy(slot, &r, sizeof(r));
    }
}

static void blkrw_fill(void *slot, uint32_t i)
{
    /* direct requests only; 16 in a row share a segment count */
    struct blkif_request r;
    memset(&r, 0, sizeof(r));
    r.operation = (i / 3) % 2 ? BLKIF_OP_WRITE : BLKIF_OP_READ; r.nr_segments = 1 + (i / 16) % 11;
    r.handle = 51712; r.id = 0x2000 + i; r.sector_number = (1ULL << 41) + (uint64_t)i * 8;
    for (unsigned k = 0; k < r.nr_segments; k++) {
        r.seg[k].gref = 5000 + 16 * i + k; r.seg[k].first_sect = (i + k) % 8; r.seg[k].last_sect = 7;
    }
    memcpy(slot, &r, sizeof(r));
}

static void blk_print_req(const blkif_request_t *req, struct blkif_response *rsp)
{
    if (req->operation == BLKIF_OP_DISCARD) {
        const struct blkif_request_discard *d = (const void *)req;
        printf(" discard:%u:%u:%llu:%llu:%llu", d->flag, d->handle, (unsigned long long)d->id,
               (unsigned long long)d->sector_number, (unsigned long long)d->nr_sectors);
        rsp->id = d->id; rsp->operation = d->operation;
    } else if (req->operation == BLKIF_OP_INDIRECT) {
        const struct blkif_request_indirect *r = (const void *)req;
        printf(" ind:%u:%u:%llu:%llu:%u:", r->indirect_op, r->nr_segments,
               (unsigned long long)r->id, (unsigned long long)r->sector_number, r->handle);
        for (unsigned j = 0; j < (r->nr_segments + 511u) / 512u; j++)
            printf("%s%u", j ? "," : "", r->indirect_grefs[j]);
        rsp->id = r->id; rsp->operation = r->indirect_op;
    } else {
        printf(" rw:%u:%u:%u:%llu:%llu:", req->operation, req->nr_segments, req->handle,
               (unsigned long long)req->id, (unsigned long long)req->sector_number);
        for (unsigned k = 0; k < req->nr_segments && k < 11; k++)
            printf("%s%u/%u/%u", k ? "," : "", req->seg[k].gref, req->seg[k].first_sect,
                   req->seg[k].last_sect);
        rsp->id = req->id; rsp->operation = req->operation;
    }
    rsp->status = rsp->id % 3 ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR;
}

static void run_blk(int front, const char *tok, void (*fill)(void *, uint32_t))
{
    struct blkif_sring *s = (void *)page;
    if (front) {
        struct blkif_front_ring r;
        FRONT_RING_ATTACH(&r, s, 0, PAGE);
        r.req_prod_pvt = st_pvt; r.rsp_cons = st_cons;
        if (tok[0] == 'F') {
            int n = atoi(tok + 1), put = 0, notify;
            while (put < n && !RING_FULL(&r)) {
                fill(RING_GET_REQUEST(&r, r.req_prod_pvt), r.req_prod_pvt - st_start);
                r.req_prod_pvt++; put++;
            }
            RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&r, notify);
            printf("F n=%d notify=%d\n", put, notify);
        } else { /* R */
            RING_IDX rp = s->rsp_prod, i;
            int more;
            rmb();
            if (RING_RESPONSE_PROD_OVERFLOW(&r, rp)) { printf("R overflow\n"); goto out_f; }
            printf("R");
            for (i = r.rsp_cons; i != rp; i++) {
                struct blkif_response rsp;
                RING_COPY_RESPONSE(&r, i, &rsp);
                printf(" %llu:%u:%d", (unsigned long long)rsp.id, rsp.operation, rsp.status);
            }
            r.rsp_cons = i;
            RING_FINAL_CHECK_FOR_RESPONSES(&r, more);
            printf(" work=%d\n", !!more);
        }
    out_f:
        st_pvt = r.req_prod_pvt; st_cons = r.rsp_cons;
    } else {
        struct blkif_back_ring r;
        BACK_RING_ATTACH(&r, s, 0, PAGE);
        r.rsp_prod_pvt = st_pvt; r.req_cons = st_cons;
        int limit = tok[1] ? atoi(tok + 1) : -1, got = 0, notify, more = 0;
        RING_IDX rp = s->req_prod;
        rmb();
        if (RING_REQUEST_PROD_OVERFLOW(&r, rp)) { printf("B overflow\n"); goto out_b; }
        printf("B");
        while (r.req_cons != rp && !RING_REQUEST_CONS_OVERFLOW(&r, r.req_cons) &&
               (limit < 0 || got < limit)) {
            blkif_request_t req;
            struct blkif_response rsp;
            RING_COPY_REQUEST(&r, r.req_cons, &req);
            r.req_cons++; got++;
            memset(&rsp, 0, sizeof(rsp));
            blk_print_req(&req, &rsp);
            memcpy(RING_GET_RESPONSE(&r, r.rsp_prod_pvt), &rsp, sizeof(rsp));
            r.rsp_prod_pvt++;
        }
        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&r, notify);
        if (limit < 0)
            RING_FINAL_CHECK_FOR_REQUESTS(&r, more);
        printf(" notify=%d work=%d\n", notify, !!more);
    out_b:
        st_pvt = r.rsp_prod_pvt; st_cons = r.req_cons;
    }
}

/* ---------------------------------------------------------------- netif */
static void run_nettx(int front, const char *tok)
{
    struct netif_tx_sring *s = (void *)page;
    if (front) {
        struct netif_tx_front_ring r;
        FRONT_RING_ATTACH(&r, s, 0, PAGE);
        r.req_prod_pvt = st_pvt; r.rsp_cons = st_cons;
        if (tok[0] == 'F') {
            int n = atoi(tok + 1), put = 0, notify;
            while (put < n && !RING_FULL(&r)) {
                uint32_t i = r.req_prod_pvt - st_start;
                void *slot = RING_GET_REQUEST(&r, r.req_prod_pvt);
                if (i % 3 == 1) {
                    struct netif_extra_info x;
                    memset(&x, 0, sizeof(x));
                    x.type = XEN_NETIF_EXTRA_TYPE_GSO; x.u.gso.size = 1448;
                    x.u.gso.type = XEN_NETIF_GSO_TYPE_TCPV4;
                    memcpy(slot, &x, sizeof(x));
                } else {
                    struct netif_tx_request t;
                    memset(&t, 0, sizeof(t));
                    t.gref = 3000 + i; t.offset = (i * 7) % 4000;
                    t.flags = i % 3 == 0 ? (NETTXF_extra_info | NETTXF_csum_blank) : 0;
                    t.id = i & 0xffff; t.size = 60 + i;
                    memcpy(slot, &t, sizeof(t));
                }
                r.req_prod_pvt++; put++;
            }
            RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&r, notify);
            printf("F n=%d notify=%d\n", put, notify);
        } else {
            RING_IDX rp = s->rsp_prod, i;
            int more;
            rmb();
            if (RING_RESPONSE_PROD_OVERFLOW(&r, rp)) { printf("R overflow\n"); goto out_f; }
            printf("R");
            for (i = r.rsp_cons; i != rp; i++) {
                struct netif_tx_response rsp;
                RING_COPY_RESPONSE(&r, i, &rsp);
                printf(" %u:%d", rsp.id, rsp.status);
            }
            r.rsp_cons = i;
            RING_FINAL_CHECK_FOR_RESPONSES(&r, more);
            printf(" work=%d\n", !!more);
        }
    out_f:
        st_pvt = r.req_prod_pvt; st_cons = r.rsp_cons;
    } else {
        struct netif_tx_back_ring r;
        BACK_RING_ATTACH(&r, s, 0, PAGE);
        r.rsp_prod_pvt = st_pvt; r.req_cons = st_cons;
        int limit = tok[1] ? atoi(tok + 1) : -1, got = 0, notify, more = 0;
        RING_IDX rp = s->req_prod;
        rmb();
        if (RING_REQUEST_PROD_OVERFLOW(&r, rp)) { printf("B overflow\n"); goto out_b; }
        printf("B");
        while (r.req_cons != rp && !RING_REQUEST_CONS_OVERFLOW(&r, r.req_cons) &&
               (limit < 0 || got < limit)) {
            struct netif_tx_request t;
            struct netif_tx_response rsp;
            RING_COPY_REQUEST(&r, r.req_cons, &t);
            r.req_cons++; got++;
            printf(" %u:%u:%u:%u:%u", t.gref, t.offset, t.flags, t.id, t.size);
            memset(&rsp, 0, sizeof(rsp));
            rsp.id = t.id; rsp.status = (int16_t)(t.size % 3) - 1;
            memcpy(RING_GET_RESPONSE(&r, r.rsp_prod_pvt), &rsp, sizeof(rsp));
            r.rsp_prod_pvt++;
        }
        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&r, notify);
        if (limit < 0)
            RING_FINAL_CHECK_FOR_REQUESTS(&r, more);
        printf(" notify=%d work=%d\n", notify, !!more);
    out_b:
        st_pvt = r.rsp_prod_pvt; st_cons = r.req_cons;
    }
}

static void run_netrx(int front, const char *tok)
{
    struct netif_rx_sring *s = (void *)page;
    if (front) {
        struct netif_rx_front_ring r;
        FRONT_RING_ATTACH(&r, s, 0, PAGE);
        r.req_prod_pvt = st_pvt; r.rsp_cons = st_cons;
        if (tok[0] == 'F') {
            int n = atoi(tok + 1), put = 0, notify;
            while (put < n && !RING_FULL(&r)) {
                uint32_t i = r.req_prod_pvt - st_start;
                struct netif_rx_request q;
                memset(&q, 0, sizeof(q));
                q.id = i & 0xffff; q.gref = 4000 + i;
                memcpy(RING_GET_REQUEST(&r, r.req_prod_pvt), &q, sizeof(q));
                r.req_prod_pvt++; put++;
            }
            RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&r, notify);
            printf("F n=%d notify=%d\n", put, notify);
        } else {
            RING_IDX rp = s->rsp_prod, i;
            int more;
            rmb();
            if (RING_RESPONSE_PROD_OVERFLOW(&r, rp)) { printf("R overflow\n"); goto out_f; }
            printf("R");
            for (i = r.rsp_cons; i != rp; i++) {
                struct netif_rx_response rsp;
                RING_COPY_RESPONSE(&r, i, &rsp);
                printf(" %u:%u:%u:%d", rsp.id, rsp.offset, rsp.flags, rsp.status);
            }
            r.rsp_cons = i;
            RING_FINAL_CHECK_FOR_RESPONSES(&r, more);
            printf(" work=%d\n", !!more);
        }
    out_f:
        st_pvt = r.req_prod_pvt; st_cons = r.rsp_cons;
    } else {
        struct netif_rx_back_ring r;
        BACK_RING_ATTACH(&r, s, 0, PAGE);
        r.rsp_prod_pvt = st_pvt; r.req_cons = st_cons;
        int limit = tok[1] ? atoi(tok + 1) : -1, got = 0, notify, more = 0;
        RING_IDX rp = s->req_prod;
        rmb();
        if (RING_REQUEST_PROD_OVERFLOW(&r, rp)) { printf("B overflow\n"); goto out_b; }
        printf("B");
        while (r.req_cons != rp && !RING_REQUEST_CONS_OVERFLOW(&r, r.req_cons) &&
               (limit < 0 || got < limit)) {
            struct netif_rx_request q;
            RING_COPY_REQUEST(&r, r.req_cons, &q);
            r.req_cons++; got++;
            printf(" %u:%u", q.id, q.gref);
            void *slot = RING_GET_RESPONSE(&r, r.rsp_prod_pvt);
            if (q.id % 3 == 1) {
                struct netif_extra_info x;
                memset(&x, 0, sizeof(x));
                x.type = XEN_NETIF_EXTRA_TYPE_GSO; x.u.gso.size = 1448;
                x.u.gso.type = XEN_NETIF_GSO_TYPE_TCPV4;
                memcpy(slot, &x, sizeof(x));
            } else {
                struct netif_rx_response rsp;
                memset(&rsp, 0, sizeof(rsp));
                rsp.id = q.id; rsp.offset = 0;
                rsp.flags = q.id % 3 == 0 ? NETRXF_extra_info : 0;
                rsp.status = 100 + q.id % 1000;
                memcpy(slot, &rsp, sizeof(rsp));
            }
            r.rsp_prod_pvt++;
        }
        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&r, notify);
        if (limit < 0)
            RING_FINAL_CHECK_FOR_REQUESTS(&r, more);
        printf(" notify=%d work=%d\n", notify, !!more);
    out_b:
        st_pvt = r.rsp_prod_pvt; st_cons = r.req_cons;
    }
}

/* ----------------------------------------------------------- byte rings */
static unsigned char pattern(uint32_t idx, int dir) { return (unsigned char)(idx * 7 + 3 + dir * 0x40); }

/* Write n pattern bytes: the classic loop of Linux hvc_xen / xenbus xb_write. */
#define BYTE_WRITE(buf, cons_f, prod_f, mask, dir, n, label) do {                 \
    uint32_t c_ = (cons_f), p_ = (prod_f), sent_ = 0;                           \
    mb();                                                                       \
    if ((uint32_t)(p_ - c_) > sizeof(buf)) { printf(label " corrupt\n"); break; } \
    while (sent_ < (uint32_t)(n) && (uint32_t)(p_ - c_) < sizeof(buf)) {        \
        (buf)[mask(p_)] = pattern(p_, dir); p_++; sent_++;                      \
    }                                                                           \
    wmb();                                                                      \
    (prod_f) = p_;                                                              \
    printf(label " n=%u\n", sent_);                                             \
} while (0)

#define BYTE_READ(buf, cons_f, prod_f, mask, n, label) do {                       \
    uint32_t c_ = (cons_f), p_ = (prod_f), got_ = 0;                            \
    rmb();                                                                      \
    if ((uint32_t)(p_ - c_) > sizeof(buf)) { printf(label " corrupt\n"); break; } \
    printf(label " data=");                                                      \
    while (c_ != p_ && got_ < (uint32_t)(n)) { printf("%02x", (unsigned char)(buf)[mask(c_)]); c_++; got_++; } \
    mb();                                                                       \
    (cons_f) = c_;                                                              \
    printf(" n=%u\n", got_);                                                    \
} while (0)

#define CONS_IN(i) MASK_XENCONS_IDX(i, intf->in)
#define CONS_OUT(i) MASK_XENCONS_IDX(i, intf->out)

static void run_cons(const char *tok)
{
    struct xencons_interface *intf = (void *)page;
    int n = atoi(tok + 1);
    switch (tok[0]) {
    case 'W': BYTE_WRITE(intf->out, intf->out_cons, intf->out_prod, CONS_OUT, 0, n, "W"); break;
    case 'R': BYTE_READ(intf->out, intf->out_cons, intf->out_prod, CONS_OUT, n, "R"); break;
    case 'I': BYTE_WRITE(intf->in, intf->in_cons, intf->in_prod, CONS_IN, 1, n, "I"); break;
    case 'G': BYTE_READ(intf->in, intf->in_cons, intf->in_prod, CONS_IN, n, "G"); break;
    default: fprintf(stderr, "bad token %s\n", tok); exit(2);
    }
}

static void run_xs(const char *tok)
{
    struct xenstore_domain_interface *intf = (void *)page;
    int n = atoi(tok + 1);
    switch (tok[0]) {
    case 'W': BYTE_WRITE(intf->req, intf->req_cons, intf->req_prod, MASK_XENSTORE_IDX, 0, n, "W"); break;
    case 'R': BYTE_READ(intf->req, intf->req_cons, intf->req_prod, MASK_XENSTORE_IDX, n, "R"); break;
    case 'I': BYTE_WRITE(intf->rsp, intf->rsp_cons, intf->rsp_prod, MASK_XENSTORE_IDX, 1, n, "I"); break;
    case 'G': BYTE_READ(intf->rsp, intf->rsp_cons, intf->rsp_prod, MASK_XENSTORE_IDX, n, "G"); break;
    default: fprintf(stderr, "bad token %s\n", tok); exit(2);
    }
}

int main(int argc, char **argv)
{
    if (argc != 6) { fprintf(stderr, "usage: proto role page state token\n"); return 2; }
    const char *proto = argv[1], *role = argv[2], *pagef = argv[3], *statef = argv[4], *tok = argv[5];
    int front = !strcmp(role, "front");
    int byte_ring = !strcmp(proto, "cons") || !strcmp(proto, "xs");

    if (!strncmp(tok, "init:", 5)) {
        uint32_t start = (uint32_t)strtoul(tok + 5, NULL, 0);
        if (byte_ring) {
            memset(page, 0, PAGE);
            if (!strcmp(proto, "cons")) {
                struct xencons_interface *c = (void *)page;
                c->in_cons = c->in_prod = c->out_cons = c->out_prod = start;
            } else {
                struct xenstore_domain_interface *x = (void *)page;
                x->req_cons = x->req_prod = x->rsp_cons = x->rsp_prod = start;
            }
            save(pagef, page, PAGE);
        } else {
            if (front) {
                /* the frontend owns the page: SHARED_RING_INIT, then move the
                 * shared indices to `start` as a live ring would have them */
                struct blkif_sring *s = (void *)page;  /* header is protocol-independent */
                memset(page, 0, PAGE);
                SHARED_RING_INIT(s);
                s->req_prod = s->rsp_prod = start;
                s->req_event = s->rsp_event = start + 1;
                save(pagef, page, PAGE);
            }
            st_start = st_pvt = st_cons = start;
            save_state(statef);
        }
        printf("init\n");
        return 0;
    }

    load(pagef, page, PAGE);
    if (byte_ring) {
        if (!strcmp(proto, "cons")) run_cons(tok); else run_xs(tok);
    } else {
        load_state(statef);
        if (!strcmp(proto, "blk")) run_blk(front, tok, blk_fill);
        else if (!strcmp(proto, "blkrw")) run_blk(front, tok, blkrw_fill);
        else if (!strcmp(proto, "nettx")) run_nettx(front, tok);
        else if (!strcmp(proto, "netrx")) run_netrx(front, tok);
        else { fprintf(stderr, "bad proto\n"); return 2; }
        save_state(statef);
    }
    save(pagef, page, PAGE);
    return 0;
}
