/*
 * cdcflow._pgoutput_c: the hot path of the pgoutput decoder, in C.
 *
 * copy_line(buf, pos, head, seq, op, tail) turns the TupleData at byte ``pos`` of a
 * pgoutput message into one staging row in COPY text format:
 *
 *     head  <seq> \t <op> \t  tail  col1 \t col2 ... \n
 *
 * (``head`` is the commit LSN and a tab, ``tail`` the commit time and a tab). Text values
 * are escaped the way COPY text format requires (backslash, tab, LF, CR); a NULL column
 * becomes \N. It returns None, and the caller takes the general Python path, when the
 * tuple holds anything else: an unchanged TOAST value ('u'), a binary value ('b'), an
 * unknown kind, or when the message is cut short. The Python decoder in pgoutput.py
 * defines the behaviour; this module must produce exactly the same bytes
 * (tests/unit/test_pgoutput.py runs both on the same messages).
 *
 * copy_row_binary(buf, pos, ncols, lsn_field, seq, op_field, ct_field) does the same for a
 * stream in pgoutput's binary mode, producing one tuple of COPY's binary format: the
 * field count, the position fields (``lsn_field``, ``seq`` encoded here as a numeric,
 * ``op_field``, ``ct_field``, each already a complete field: int32 length then bytes), then
 * each column. A 'b' column is already laid out as COPY wants it (int32 length, then the
 * value in its type's send format); 'n' becomes length -1. Anything else gives None.
 *
 * Message layout: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
 * COPY binary format: https://www.postgresql.org/docs/current/sql-copy.html
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static inline uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static int write_decimal(char *out, long long v) {
    char tmp[24];
    int n = 0, neg = v < 0;
    unsigned long long u = neg ? (unsigned long long)(-(v + 1)) + 1 : (unsigned long long)v;
    do {
        tmp[n++] = (char)('0' + (u % 10));
        u /= 10;
    } while (u);
    int len = 0;
    if (neg) out[len++] = '-';
    while (n) out[len++] = tmp[--n];
    return len;
}

/* Take a simple buffer of args[which[i]] into bufs[i] for i < n; on failure release what
 * was taken and return -1 (the Python error is set). */
static int get_buffers(PyObject *const *args, const int *which, Py_buffer *bufs, int n) {
    for (int i = 0; i < n; i++) {
        if (PyObject_GetBuffer(args[which[i]], &bufs[i], PyBUF_SIMPLE) < 0) {
            while (i--) PyBuffer_Release(&bufs[i]);
            return -1;
        }
    }
    return 0;
}

static void release_buffers(Py_buffer *bufs, int n) {
    for (int i = 0; i < n; i++) PyBuffer_Release(&bufs[i]);
}

/* The first pass over the TupleData at ``pos``: every column must be a value of kind
 * ``value_kind`` or a NULL, all inside the buffer. Adds to *need the output bytes, at
 * ``per_byte`` per value byte plus ``per_value`` per value and ``per_null`` per NULL.
 * Returns the column count, or -1 when the tuple is for the Python path. */
static int size_tuple(const unsigned char *data, Py_ssize_t size, Py_ssize_t pos, unsigned char value_kind,
                      Py_ssize_t per_byte, Py_ssize_t per_value, Py_ssize_t per_null, Py_ssize_t *need) {
    if (pos < 0 || pos + 2 > size) return -1;
    int ncols = (int16_t)((data[pos] << 8) | data[pos + 1]);
    Py_ssize_t p = pos + 2;
    for (int i = 0; i < ncols; i++) {
        if (p >= size) return -1;
        unsigned char kind = data[p];
        if (kind == value_kind) {
            if (p + 5 > size) return -1;
            uint32_t len = be32(data + p + 1);
            if ((Py_ssize_t)len > size - p - 5) return -1;
            *need += per_byte * (Py_ssize_t)len + per_value;
            p += 5 + (Py_ssize_t)len;
        } else if (kind == 'n') {
            *need += per_null;
            p += 1;
        } else {
            return -1; /* 'u' unchanged TOAST, the other value kind, or unknown */
        }
    }
    return ncols;
}

static PyObject *copy_line(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "copy_line(buf, pos, head, seq, op, tail) takes 6 arguments");
        return NULL;
    }
    Py_buffer bufs[3]; /* buf, head, tail */
    static const int which[3] = {0, 2, 5};
    if (get_buffers(args, which, bufs, 3) < 0) return NULL;
    Py_buffer *buf = &bufs[0], *head = &bufs[1], *tail = &bufs[2];
    PyObject *result = NULL;
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    long long seq = PyLong_AsLongLong(args[3]);
    long long op = PyLong_AsLongLong(args[4]);
    if (PyErr_Occurred()) goto done;

    const unsigned char *data = (const unsigned char *)buf->buf;
    /* Worst case: every value byte escaped. */
    Py_ssize_t need = head->len + 48 + tail->len;
    int ncols = size_tuple(data, buf->len, pos, 't', 2, 1, 3, &need);
    if (ncols < 0) goto fallback;

    result = PyBytes_FromStringAndSize(NULL, need);
    if (result == NULL) goto done;
    char *out = PyBytes_AS_STRING(result);
    Py_ssize_t o = 0;
    memcpy(out + o, head->buf, head->len);
    o += head->len;
    o += write_decimal(out + o, seq);
    out[o++] = '\t';
    o += write_decimal(out + o, op);
    out[o++] = '\t';
    memcpy(out + o, tail->buf, tail->len);
    o += tail->len;
    Py_ssize_t p = pos + 2;
    for (int i = 0; i < ncols; i++) {
        if (i) out[o++] = '\t';
        unsigned char kind = data[p];
        if (kind == 'n') {
            out[o++] = '\\';
            out[o++] = 'N';
            p += 1;
            continue;
        }
        uint32_t len = be32(data + p + 1);
        const unsigned char *v = data + p + 5;
        const unsigned char *end = v + len;
        while (v < end) {
            /* Copy the run up to the next byte that needs escaping in one go. */
            const unsigned char *run = v;
            while (v < end && *v != '\\' && *v != '\t' && *v != '\n' && *v != '\r') v++;
            if (v > run) {
                memcpy(out + o, run, (size_t)(v - run));
                o += v - run;
            }
            if (v < end) {
                out[o++] = '\\';
                switch (*v) {
                    case '\\': out[o++] = '\\'; break;
                    case '\t': out[o++] = 't'; break;
                    case '\n': out[o++] = 'n'; break;
                    default: out[o++] = 'r'; break;
                }
                v++;
            }
        }
        p += 5 + (Py_ssize_t)len;
    }
    out[o++] = '\n';
    if (_PyBytes_Resize(&result, o) < 0) result = NULL;
    goto done;

fallback:
    result = Py_NewRef(Py_None);
done:
    release_buffers(bufs, 3);
    return result;
}

/* A non-negative integer as a complete COPY binary field of type numeric (scale 0). */
static Py_ssize_t write_numeric_field(unsigned char *out, unsigned long long v) {
    uint16_t digits[8];
    int n = 0;
    while (v) {
        digits[n++] = (uint16_t)(v % 10000);
        v /= 10000;
    }
    uint32_t len = 8 + 2 * (uint32_t)n;
    out[0] = (unsigned char)(len >> 24);
    out[1] = (unsigned char)(len >> 16);
    out[2] = (unsigned char)(len >> 8);
    out[3] = (unsigned char)len;
    int16_t weight = n ? (int16_t)(n - 1) : 0;
    out[4] = 0;
    out[5] = (unsigned char)n; /* ndigits */
    out[6] = (unsigned char)((uint16_t)weight >> 8);
    out[7] = (unsigned char)weight;
    out[8] = out[9] = 0;   /* sign: positive */
    out[10] = out[11] = 0; /* dscale 0 */
    Py_ssize_t o = 12;
    for (int i = n - 1; i >= 0; i--) { /* most significant first */
        out[o++] = (unsigned char)(digits[i] >> 8);
        out[o++] = (unsigned char)digits[i];
    }
    return o;
}

static PyObject *copy_row_binary(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "copy_row_binary(buf, pos, ncols, lsn_field, seq, op_field, ct_field) takes 7 arguments");
        return NULL;
    }
    Py_buffer bufs[4]; /* buf, lsn_field, op_field, ct_field */
    static const int which[4] = {0, 3, 5, 6};
    if (get_buffers(args, which, bufs, 4) < 0) return NULL;
    Py_buffer *buf = &bufs[0], *lsn = &bufs[1], *opf = &bufs[2], *ct = &bufs[3];
    PyObject *result = NULL;
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    long total = PyLong_AsLong(args[2]);
    long long seq = PyLong_AsLongLong(args[4]);
    if (PyErr_Occurred()) goto done;
    if (seq < 0 || total < 0 || total > 32767) goto fallback;

    const unsigned char *data = (const unsigned char *)buf->buf;
    Py_ssize_t need = 2 + lsn->len + 28 + opf->len + ct->len;
    int ncols = size_tuple(data, buf->len, pos, 'b', 1, 4, 4, &need);
    if (ncols < 0) goto fallback;

    result = PyBytes_FromStringAndSize(NULL, need);
    if (result == NULL) goto done;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    Py_ssize_t o = 0;
    out[o++] = (unsigned char)(total >> 8);
    out[o++] = (unsigned char)total;
    memcpy(out + o, lsn->buf, lsn->len);
    o += lsn->len;
    o += write_numeric_field(out + o, (unsigned long long)seq);
    memcpy(out + o, opf->buf, opf->len);
    o += opf->len;
    memcpy(out + o, ct->buf, ct->len);
    o += ct->len;
    Py_ssize_t p = pos + 2;
    for (int i = 0; i < ncols; i++) {
        if (data[p] == 'n') {
            out[o++] = 0xff;
            out[o++] = 0xff;
            out[o++] = 0xff;
            out[o++] = 0xff;
            p += 1;
            continue;
        }
        uint32_t len = be32(data + p + 1);
        memcpy(out + o, data + p + 1, 4 + (size_t)len);
        o += 4 + (Py_ssize_t)len;
        p += 5 + (Py_ssize_t)len;
    }
    if (_PyBytes_Resize(&result, o) < 0) result = NULL;
    goto done;

fallback:
    result = Py_NewRef(Py_None);
done:
    release_buffers(bufs, 4);
    return result;
}

static PyMethodDef methods[] = {
    {"copy_line", (PyCFunction)(void (*)(void))copy_line, METH_FASTCALL,
     "copy_line(buf, pos, head, seq, op, tail) -> bytes | None: a pgoutput TupleData as a COPY text row."},
    {"copy_row_binary", (PyCFunction)(void (*)(void))copy_row_binary, METH_FASTCALL,
     "copy_row_binary(buf, pos, ncols, lsn_field, seq, op_field, ct_field) -> bytes | None: "
     "a binary-mode pgoutput TupleData as a COPY binary tuple."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "cdcflow._pgoutput_c", "The pgoutput decoder's hot path in C.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__pgoutput_c(void) { return PyModule_Create(&module); }
