/* The compiled Decoder: ssekit/_decoder.py's algorithm in C, for the same results.
 *
 * WHATWG HTML, "Server-sent events", 9.2.5 (Parsing an event stream) and 9.2.6
 * (Interpreting an event stream):
 * https://html.spec.whatwg.org/multipage/server-sent-events.html#parsing-an-event-stream
 *
 * ssekit/_decoder.py is the reference: its docstrings state the rules (line
 * endings, the BOM, UTF-8 with replacement, the max_event_size rule, the state
 * kept between feeds, failing for good), and tests/test_core_implementations.py
 * feeds both the same bytes under random splits and compares everything they
 * give, state and errors included. Only the parsing is here; ssekit/_compiled.py
 * gives it the pure class's name and documentation.
 *
 * Memory: every buffer is bounded by max_event_size (call it N). The partial
 * line and the data buffer are checked before they grow, so neither ever holds
 * more than N bytes; the event type is part of one line, so at most N too.
 * A chunk is parsed where it lies (bytes, bytearray, any contiguous buffer):
 * a line inside one chunk is read in place, only a line cut by a read is
 * gathered first.
 *
 * Time: each chunk is searched once for LF and once for CR (the next of each is
 * remembered until passed), and every byte is copied at most twice (into the
 * partial line, then into the data buffer; both grow by doubling), so feeding
 * is linear in the input whatever the split: a 16 MiB line fed a byte at a
 * time grows one buffer.
 *
 * Python code may run while a chunk is parsed (LimitExceeded's __init__, and a
 * garbage collection may run finalizers), so the decoder refuses to be fed,
 * closed or re-initialised meanwhile (StateError) rather than see its buffers
 * move under it.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if PY_VERSION_HEX < 0x030C0000
#include "structmember.h"
#define Py_T_OBJECT_EX T_OBJECT_EX
#define Py_READONLY READONLY
#endif

/* ssekit._decoder.DEFAULT_MAX_EVENT_SIZE and MAX_RETRY (2**64 - 1); a test
 * checks they agree. */
#define DEFAULT_MAX_EVENT_SIZE (16 * 1024 * 1024)

/* A buffer that grew past this is let go when emptied, so one large event
 * does not pin its size for the rest of the stream. */
#define KEEP_CAPACITY (64 * 1024)

/* Event types up to this size keep their decoded str for the next event. */
#define TYPE_CACHE_SIZE 64

static const unsigned char BOM[3] = {0xEF, 0xBB, 0xBF};

/* Set once at import: the classes built and raised, and Event's slot layout. */
static PyTypeObject *Event_type;
static PyTypeObject *Comment_type;
static PyObject *LimitExceeded;
static PyObject *StateError;
static PyObject *InputTypeError;
static PyObject *copyreg_newobj;       /* copyreg.__newobj__: cls.__new__(cls) */
static Py_ssize_t off_data, off_event, off_id, off_retry, off_text;
static PyObject *str_message;          /* "message" */
static PyObject *str_empty;            /* "" */
static PyObject *str_events;           /* "events" */
static PyObject *str_line;             /* "line" */
static PyObject *str_event_data;       /* "event data" */
static PyObject *str_max_event_size;   /* "max_event_size" */

typedef struct {
    char *bytes;
    Py_ssize_t len;
    Py_ssize_t cap;
} Buffer;

/* Room for `need` bytes in all (need <= limit). Capacity doubles, capped at
 * limit, so a buffer never holds more than its bound. */
static int
buffer_reserve(Buffer *b, Py_ssize_t need, Py_ssize_t limit)
{
    if (need <= b->cap) {
        return 0;
    }
    Py_ssize_t cap = b->cap < 64 ? 64 : b->cap;
    while (cap < need) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    if (cap > limit) {
        cap = limit;
    }
    if (cap < need) {
        cap = need;
    }
    char *bytes = PyMem_Realloc(b->bytes, (size_t)cap);
    if (bytes == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->bytes = bytes;
    b->cap = cap;
    return 0;
}

static int
buffer_append(Buffer *b, const char *s, Py_ssize_t n, Py_ssize_t limit)
{
    if (n == 0) {
        return 0;
    }
    if (buffer_reserve(b, b->len + n, limit) < 0) {
        return -1;
    }
    memcpy(b->bytes + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

static void
buffer_free(Buffer *b)
{
    PyMem_Free(b->bytes);
    b->bytes = NULL;
    b->len = b->cap = 0;
}

static void
buffer_clear(Buffer *b)
{
    b->len = 0;
    if (b->cap > KEEP_CAPACITY) {
        buffer_free(b);
    }
}

typedef struct {
    PyObject_HEAD
    /* Settings. */
    int comments;
    Py_ssize_t max;       /* max_event_size, at most PY_SSIZE_T_MAX */
    PyObject *max_obj;    /* max_event_size as given: repr, LimitExceeded.maximum */
    /* What the spec keeps on the EventSource. */
    PyObject *last_event_id; /* str */
    PyObject *retry;         /* int, or NULL for None */
    /* The stream. */
    int closed;
    int busy;                /* inside feed(): see the top of this file */
    PyObject *error;         /* the LimitExceeded raised, or NULL */
    int bom_decided;         /* the first bytes were a BOM or were not */
    int bom_len;             /* bytes held while they may still be a split BOM */
    unsigned char bom_held[2];
    int skip_lf;             /* the last chunk ended in CR: drop an LF opening this one */
    int skipping;            /* inside a dropped line over the bound: discard to its end */
    Buffer line;             /* the unterminated line, at most max bytes */
    /* The spec's buffers. */
    Buffer data;             /* each data value followed by LF; len is the counted size */
    Buffer type;             /* the event type, as bytes, until dispatch */
    PyObject *id_buffer;     /* the last event ID buffer (str) */
    PyObject *block_retry;   /* a valid retry in this block (int), or NULL */
    int pending;             /* a field other than data was seen since the blank line */
    /* The previous event type, decoded: field-heavy streams repeat theirs. */
    char type_raw[TYPE_CACHE_SIZE];
    Py_ssize_t type_raw_len;
    PyObject *type_str;      /* NULL when nothing is cached */
} DecoderObject;

/* -- errors ------------------------------------------------------------------ */

static void
raise_instance(PyObject *exc)
{
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
}

/* Raise InputTypeError(message, argument=argument, got=<the type's __name__>),
 * as the pure decoder does for a value of the wrong type. Returns -1. */
static int
wrong_type(const char *message, const char *argument, PyObject *value)
{
    PyObject *got = PyType_GetName(Py_TYPE(value));
    if (got == NULL) {
        return -1;
    }
    PyObject *text = PyUnicode_FromFormat(message, got);
    PyObject *kwargs = text == NULL ? NULL
                                    : Py_BuildValue("{sssO}", "argument", argument, "got", got);
    PyObject *exc = NULL;
    if (kwargs != NULL) {
        PyObject *args = PyTuple_Pack(1, text);
        if (args != NULL) {
            exc = PyObject_Call(InputTypeError, args, kwargs);
            Py_DECREF(args);
        }
    }
    Py_XDECREF(kwargs);
    Py_XDECREF(text);
    Py_DECREF(got);
    if (exc != NULL) {
        raise_instance(exc);
        Py_DECREF(exc);
    }
    return -1;
}

/* feed() was given something that is not a buffer: the pure decoder's _not_bytes. */
static int
not_bytes(PyObject *data)
{
    const char *message =
        PyUnicode_Check(data)
            ? "Decoder.feed takes bytes (a chunk of the stream), got %U: encode it first "
              "(text.encode())"
            : "Decoder.feed takes bytes (a chunk of the stream), got %U: pass bytes";
    return wrong_type(message, "data", data);
}

static int
check_usable(DecoderObject *self)
{
    if (self->busy) {
        PyErr_SetString(StateError,
                        "this Decoder is in the middle of a feed() (a re-entrant "
                        "or concurrent call); feed one decoder from one place");
        return -1;
    }
    if (self->error != NULL) {
        PyObject *message = PyUnicode_FromFormat(
            "this Decoder failed earlier (%S); make a new Decoder", self->error);
        if (message == NULL) {
            return -1;
        }
        PyObject *exc = PyObject_CallOneArg(StateError, message);
        Py_DECREF(message);
        if (exc == NULL) {
            return -1;
        }
        /* raise StateError(...) from the LimitExceeded */
        PyException_SetCause(exc, Py_NewRef(self->error));
        raise_instance(exc);
        Py_DECREF(exc);
        return -1;
    }
    if (self->closed) {
        PyErr_SetString(StateError,
                        "this Decoder is closed; make a new Decoder for a new stream");
        return -1;
    }
    return 0;
}

/* Raise LimitExceeded carrying `out`, the items this feed() completed before
 * the offending line, and stay failed. Returns -1. */
static int
fail_limit(DecoderObject *self, PyObject *limit, Py_ssize_t size, PyObject *out)
{
    PyObject *exc = PyObject_CallFunction(LimitExceeded, "OnOO", limit, size,
                                          self->max_obj, str_max_event_size);
    if (exc == NULL) {
        return -1;
    }
    if (PyObject_SetAttr(exc, str_events, out) < 0) {
        Py_DECREF(exc);
        return -1;
    }
    Py_XSETREF(self->error, Py_NewRef(exc));
    raise_instance(exc);
    Py_DECREF(exc);
    return -1;
}

/* -- building events --------------------------------------------------------- */

#define SLOT(obj, offset) (*(PyObject **)((char *)(obj) + (offset)))

/* An Event straight into its slots, as the pure decoder's _Building does:
 * the fields are known to be str (and int or None), so Event.__init__'s checks
 * would only cost time. */
static PyObject *
make_event(PyObject *data, PyObject *type, PyObject *id, PyObject *retry)
{
    PyObject *event = Event_type->tp_alloc(Event_type, 0);
    if (event == NULL) {
        return NULL;
    }
    SLOT(event, off_data) = Py_NewRef(data);
    SLOT(event, off_event) = Py_NewRef(type);
    SLOT(event, off_id) = Py_NewRef(id);
    SLOT(event, off_retry) = Py_NewRef(retry);
    return event;
}

static PyObject *
make_comment(PyObject *text)
{
    PyObject *comment = Comment_type->tp_alloc(Comment_type, 0);
    if (comment == NULL) {
        return NULL;
    }
    SLOT(comment, off_text) = Py_NewRef(text);
    return comment;
}

/* The code point of the well-formed UTF-8 sequence at p (of `size` bytes,
 * 2 to 4, already checked). */
static inline Py_UCS4
code_point(const unsigned char *p, int size)
{
    if (size == 2) {
        return ((Py_UCS4)(p[0] & 0x1F) << 6) | (p[1] & 0x3F);
    }
    if (size == 3) {
        return ((Py_UCS4)(p[0] & 0x0F) << 12) | ((Py_UCS4)(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    }
    return ((Py_UCS4)(p[0] & 0x07) << 18) | ((Py_UCS4)(p[1] & 0x3F) << 12)
           | ((Py_UCS4)(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

/* The length of the well-formed UTF-8 sequence starting at p (Unicode's table
 * 3-7: no overlong form, no surrogate, nothing past U+10FFFF), or 0. */
static inline int
sequence_size(const unsigned char *p, const unsigned char *end)
{
    unsigned char lead = p[0];
    Py_ssize_t left = end - p;
    if (lead < 0x80) {
        return 1;
    }
    if (lead < 0xC2) {
        return 0;
    }
    if (lead < 0xE0) {
        return left >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : 0;
    }
    if (lead < 0xF0) {
        unsigned char low = lead == 0xE0 ? 0xA0 : 0x80;
        unsigned char high = lead == 0xED ? 0x9F : 0xBF;
        return left >= 3 && p[1] >= low && p[1] <= high && (p[2] & 0xC0) == 0x80 ? 3 : 0;
    }
    if (lead < 0xF5) {
        unsigned char low = lead == 0xF0 ? 0x90 : 0x80;
        unsigned char high = lead == 0xF4 ? 0x8F : 0xBF;
        return left >= 4 && p[1] >= low && p[1] <= high && (p[2] & 0xC0) == 0x80
                       && (p[3] & 0xC0) == 0x80
                   ? 4
                   : 0;
    }
    return 0;
}

/* The first byte at or after p that is not ASCII, or end (eight at a time). */
static inline const unsigned char *
skip_ascii(const unsigned char *p, const unsigned char *end)
{
    while (end - p >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        if (word & UINT64_C(0x8080808080808080)) {
            break;
        }
        p += 8;
    }
    while (p < end && *p < 0x80) {
        p++;
    }
    return p;
}

/* Write the (checked) text from start to end into `text`, of TYPE's width. */
#define FILL(TYPE)                                                                        \
    do {                                                                                  \
        TYPE *to = (TYPE *)PyUnicode_DATA(text);                                          \
        for (const unsigned char *p = start; p < end;) {                                  \
            const unsigned char *ascii_end = skip_ascii(p, end);                          \
            while (p < ascii_end) {                                                       \
                *to++ = *p++;                                                             \
            }                                                                             \
            if (p < end) {                                                                \
                int size = sequence_size(p, end);                                         \
                *to++ = (TYPE)code_point(p, size);                                        \
                p += size;                                                                \
            }                                                                             \
        }                                                                                 \
    } while (0)

/* UTF-8 with U+FFFD replacement: the pure decoder's _decode, and what the
 * spec's streaming decode gives (CR and LF never continue a sequence).
 *
 * Well-formed text (nearly all of it) is decoded here in two passes, counting
 * the characters and the widest, then writing them straight into a str of
 * that width: CPython's decoder widens its buffer as it meets wider characters
 * (a fifth of a Chinese event's time). Short values, and any ill-formed
 * sequence, go to CPython's own decoder, so the replacement is exactly Python's. */
static PyObject *
decode(const char *s, Py_ssize_t n)
{
    if (n < 16) {
        /* Short (an id, an event type): CPython's decoder, with its cached
         * one-character strings; widening costs nothing here. */
        return n == 0 ? Py_NewRef(str_empty) : PyUnicode_DecodeUTF8(s, n, "replace");
    }
    const unsigned char *start = (const unsigned char *)s;
    const unsigned char *end = start + n;
    Py_ssize_t count = 0;
    Py_UCS4 widest = 0;
    for (const unsigned char *p = start; p < end;) {
        const unsigned char *ascii_end = skip_ascii(p, end);
        count += ascii_end - p;
        p = ascii_end;
        if (p == end) {
            break;
        }
        int size = sequence_size(p, end);
        if (size == 0) {
            return PyUnicode_DecodeUTF8(s, n, "replace");
        }
        Py_UCS4 c = code_point(p, size);
        if (c > widest) {
            widest = c;
        }
        p += size;
        count++;
    }
    PyObject *text = PyUnicode_New(count, widest < 0x80 ? 0x7F : widest);
    if (text == NULL) {
        return NULL;
    }
    if (count == n) {
        memcpy(PyUnicode_DATA(text), s, (size_t)n); /* ASCII */
        return text;
    }
    switch (PyUnicode_KIND(text)) {
    case PyUnicode_1BYTE_KIND:
        FILL(Py_UCS1);
        break;
    case PyUnicode_2BYTE_KIND:
        FILL(Py_UCS2);
        break;
    default:
        FILL(Py_UCS4);
        break;
    }
    return text;
}

/* For tests: decode() on any bytes. */
static PyObject *
module_decode(PyObject *Py_UNUSED(module), PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "_decode() takes bytes");
        return NULL;
    }
    return decode(PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg));
}

/* The block's event type, decoded; the previous one's str when it repeats. */
static PyObject *
event_type(DecoderObject *self)
{
    Py_ssize_t n = self->type.len;
    if (self->type_str != NULL && n == self->type_raw_len
        && memcmp(self->type.bytes, self->type_raw, (size_t)n) == 0) {
        return Py_NewRef(self->type_str);
    }
    PyObject *text = decode(self->type.bytes, n);
    if (text != NULL && n <= TYPE_CACHE_SIZE) {
        memcpy(self->type_raw, self->type.bytes, (size_t)n);
        self->type_raw_len = n;
        Py_XSETREF(self->type_str, Py_NewRef(text));
    }
    return text;
}

/* -- interpreting lines (9.2.6) ---------------------------------------------- */

/* A blank line: dispatch the event. The last event ID is set even for a block
 * without data, which dispatches nothing. */
static int
dispatch(DecoderObject *self, PyObject *out)
{
    Py_SETREF(self->last_event_id, Py_NewRef(self->id_buffer));
    if (self->data.len > 0) {
        /* The data buffer without its final LF. */
        PyObject *text = decode(self->data.bytes, self->data.len - 1);
        if (text == NULL) {
            return -1;
        }
        PyObject *type;
        if (self->pending && self->type.len > 0) {
            type = event_type(self);
            if (type == NULL) {
                Py_DECREF(text);
                return -1;
            }
        }
        else {
            type = Py_NewRef(str_message);
        }
        PyObject *retry = self->block_retry != NULL ? self->block_retry : Py_None;
        PyObject *event = make_event(text, type, self->last_event_id, retry);
        Py_DECREF(text);
        Py_DECREF(type);
        if (event == NULL) {
            return -1;
        }
        int status = PyList_Append(out, event);
        Py_DECREF(event);
        if (status < 0) {
            return -1;
        }
        buffer_clear(&self->data);
    }
    if (self->pending) {
        buffer_clear(&self->type);
        Py_CLEAR(self->block_retry);
        self->pending = 0;
    }
    return 0;
}

static int
append_data(DecoderObject *self, const char *value, Py_ssize_t n, PyObject *out)
{
    /* The data buffer counts each value plus the LF that follows it. */
    Py_ssize_t need = n + 1;
    if (need > self->max - self->data.len) {
        return fail_limit(self, str_event_data, self->data.len + need, out);
    }
    if (buffer_reserve(&self->data, self->data.len + need, self->max) < 0) {
        return -1;
    }
    if (n > 0) {
        memcpy(self->data.bytes + self->data.len, value, (size_t)n);
    }
    self->data.bytes[self->data.len + n] = '\n';
    self->data.len += need;
    return 0;
}

/* retry: only ASCII digits count; a value over 2**64 - 1 is ignored, as
 * Chromium ignores it (leading zeros are free). */
static int
set_retry(DecoderObject *self, const char *value, Py_ssize_t n)
{
    if (n == 0) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (value[i] < '0' || value[i] > '9') {
            return 0;
        }
    }
    Py_ssize_t i = 0;
    while (i < n && value[i] == '0') {
        i++;
    }
    if (n - i > 20) {
        return 0;
    }
    uint64_t total = 0;
    for (; i < n; i++) {
        uint64_t digit = (uint64_t)(value[i] - '0');
        if (total > (UINT64_MAX - digit) / 10) {
            return 0;
        }
        total = total * 10 + digit;
    }
    PyObject *retry = PyLong_FromUnsignedLongLong((unsigned long long)total);
    if (retry == NULL) {
        return -1;
    }
    Py_XSETREF(self->retry, Py_NewRef(retry));
    Py_XSETREF(self->block_retry, retry);
    return 0;
}

/* One complete line (its line break excluded), within the bound. */
static int
process_line(DecoderObject *self, const char *s, Py_ssize_t n, PyObject *out)
{
    if (n == 0) {
        return dispatch(self, out);
    }
    if (s[0] == ':') {
        /* A comment: ignored unless asked for. */
        if (!self->comments) {
            return 0;
        }
        const char *value = s + 1;
        Py_ssize_t size = n - 1;
        if (size > 0 && value[0] == ' ') {
            value++;
            size--;
        }
        PyObject *text = decode(value, size);
        if (text == NULL) {
            return -1;
        }
        PyObject *comment = make_comment(text);
        Py_DECREF(text);
        if (comment == NULL) {
            return -1;
        }
        int status = PyList_Append(out, comment);
        Py_DECREF(comment);
        return status;
    }
    /* A field: the name up to the first colon, the value after it with one
     * leading space dropped; no colon, the whole line names a field whose
     * value is empty. Names compare as bytes (a U+FFFD never equals one). */
    const char *colon = memchr(s, ':', (size_t)n);
    Py_ssize_t name = colon != NULL ? colon - s : n;
    const char *value = s + n;
    Py_ssize_t size = 0;
    if (colon != NULL) {
        value = colon + 1;
        size = n - name - 1;
        if (size > 0 && value[0] == ' ') {
            value++;
            size--;
        }
    }
    if (name == 4 && memcmp(s, "data", 4) == 0) {
        return append_data(self, value, size, out);
    }
    /* Any other field, even an unknown one, is part of the block. */
    self->pending = 1;
    if (name == 5 && memcmp(s, "event", 5) == 0) {
        self->type.len = 0;
        return buffer_append(&self->type, value, size, self->max);
    }
    if (name == 2 && s[0] == 'i' && s[1] == 'd') {
        /* An id containing NUL is ignored entirely. */
        if (size > 0 && memchr(value, 0, (size_t)size) != NULL) {
            return 0;
        }
        PyObject *id = decode(value, size);
        if (id == NULL) {
            return -1;
        }
        Py_SETREF(self->id_buffer, id);
        return 0;
    }
    if (name == 5 && memcmp(s, "retry", 5) == 0) {
        return set_retry(self, value, size);
    }
    return 0;
}

/* -- the bound on lines ------------------------------------------------------- */

/* Must a line over the bound whose first min(N, 6) bytes are `head` be held
 * (so it raises), or is it one the decoder drops? See the pure decoder's
 * _maybe_stand_in: a kept field name is at most five bytes, so six bytes
 * without a colon already name another field. */
static int
is_kept(DecoderObject *self, const char *head, Py_ssize_t n)
{
    static const char *const kept[4] = {"data", "event", "id", "retry"};
    static const Py_ssize_t sizes[4] = {4, 5, 2, 5};
    if (head[0] == ':') {
        return self->comments;
    }
    const char *colon = memchr(head, ':', (size_t)n);
    for (int i = 0; i < 4; i++) {
        if (colon != NULL) {
            if (colon - head == sizes[i] && memcmp(head, kept[i], (size_t)sizes[i]) == 0) {
                return 1;
            }
        }
        else if (n <= sizes[i] && memcmp(head, kept[i], (size_t)n) == 0) {
            return 1;
        }
    }
    return 0;
}

/* A line (held part `self->line` plus `s`) of `size` bytes passed the bound:
 * raise, or interpret it as the ignored line it is and let go of it. */
static int
long_line(DecoderObject *self, const char *s, Py_ssize_t size, PyObject *out)
{
    char head[6];
    Py_ssize_t n = self->max < 6 ? self->max : 6;
    Py_ssize_t held = self->line.len < n ? self->line.len : n;
    if (held > 0) {
        memcpy(head, self->line.bytes, (size_t)held);
    }
    /* size > max >= n, so the line has n bytes */
    memcpy(head + held, s, (size_t)(n - held));
    if (is_kept(self, head, n)) {
        return fail_limit(self, str_line, size, out);
    }
    /* Dropped: a comment nobody asked for is nothing; an unknown field still
     * makes the block non-empty. */
    if (head[0] != ':') {
        self->pending = 1;
    }
    buffer_clear(&self->line);
    return 0;
}

/* A line ends at s + n: join it to what is held, check the bound, interpret. */
static int
end_line(DecoderObject *self, const char *s, Py_ssize_t n, PyObject *out)
{
    if (self->line.len == 0) {
        if (n > self->max) {
            return long_line(self, s, n, out);
        }
        return process_line(self, s, n, out);
    }
    if (n > self->max - self->line.len) {
        return long_line(self, s, self->line.len + n, out);
    }
    if (buffer_append(&self->line, s, n, self->max) < 0) {
        return -1;
    }
    int status = process_line(self, self->line.bytes, self->line.len, out);
    buffer_clear(&self->line);
    return status;
}

/* The chunk ends inside a line: hold it, or past the bound raise or skip it. */
static int
extend_line(DecoderObject *self, const char *s, Py_ssize_t n, PyObject *out)
{
    if (n > self->max - self->line.len) {
        if (long_line(self, s, self->line.len + n, out) < 0) {
            return -1;
        }
        self->skipping = 1;
        return 0;
    }
    return buffer_append(&self->line, s, n, self->max);
}

/* -- parsing a chunk (9.2.5) -------------------------------------------------- */

static int
parse(DecoderObject *self, const char *chunk, Py_ssize_t n, PyObject *out)
{
    char *joined = NULL;
    if (!self->bom_decided) {
        /* The UTF-8 decode strips one leading BOM, even when it arrives a byte
         * at a time; hold bytes until that is decided. */
        Py_ssize_t held = self->bom_len;
        Py_ssize_t more = 0;
        while (held + more < 3 && more < n && (unsigned char)chunk[more] == BOM[held + more]) {
            more++;
        }
        if (held + more < 3 && more == n) {
            memcpy(self->bom_held + held, chunk, (size_t)n);
            self->bom_len += (int)n;
            return 0;
        }
        self->bom_decided = 1;
        self->bom_len = 0;
        if (held + more == 3) {
            chunk += more;
            n -= more;
        }
        else if (held > 0) {
            /* Not a BOM: the held bytes open the first line. */
            joined = PyMem_Malloc((size_t)(held + n));
            if (joined == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            memcpy(joined, self->bom_held, (size_t)held);
            memcpy(joined + held, chunk, (size_t)n);
            chunk = joined;
            n += held;
        }
    }
    if (self->skip_lf && n > 0) {
        /* CRLF split across chunks: the line already ended at the CR. */
        self->skip_lf = 0;
        if (chunk[0] == '\n') {
            chunk++;
            n--;
        }
    }
    int status = 0;
    Py_ssize_t pos = 0;
    Py_ssize_t lf = -1; /* the next LF at or after pos (n: none), once searched */
    Py_ssize_t cr = -1; /* the same for CR */
    while (pos < n) {
        if (lf < pos) {
            const char *found = memchr(chunk + pos, '\n', (size_t)(n - pos));
            lf = found != NULL ? found - chunk : n;
        }
        if (cr < pos) {
            const char *found = memchr(chunk + pos, '\r', (size_t)(n - pos));
            cr = found != NULL ? found - chunk : n;
        }
        Py_ssize_t end = lf < cr ? lf : cr;
        if (self->skipping) {
            /* The rest of a dropped line, up to and including its end. */
            if (end == n) {
                break;
            }
            self->skipping = 0;
        }
        else if (end == n) {
            status = extend_line(self, chunk + pos, n - pos, out);
            break;
        }
        else if ((status = end_line(self, chunk + pos, end - pos, out)) < 0) {
            break;
        }
        /* CRLF, CR and LF all end lines. A CR ending the chunk ends its line
         * now (latency); the LF that may open the next chunk is dropped. */
        if (chunk[end] == '\r') {
            if (end + 1 == n) {
                self->skip_lf = 1;
                pos = n;
            }
            else {
                pos = end + (chunk[end + 1] == '\n' ? 2 : 1);
            }
        }
        else {
            pos = end + 1;
        }
    }
    PyMem_Free(joined);
    return status;
}

/* -- the Python type ------------------------------------------------------------ */

static PyObject *
Decoder_feed(DecoderObject *self, PyObject *arg)
{
    /* The type first, as the pure decoder: a str is InputTypeError even once
     * closed or failed, and leaves the decoder as it was. */
    if (!PyBytes_CheckExact(arg) && !PyObject_CheckBuffer(arg)) {
        not_bytes(arg);
        return NULL;
    }
    if (check_usable(self) < 0) {
        return NULL;
    }
    Py_buffer view;
    PyObject *copy = NULL;
    const char *chunk;
    Py_ssize_t n;
    int viewed = 0;
    if (PyBytes_CheckExact(arg)) {
        chunk = PyBytes_AS_STRING(arg);
        n = PyBytes_GET_SIZE(arg);
    }
    else {
        if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) == 0) {
            viewed = 1;
            chunk = view.buf;
            n = view.len;
        }
        else {
            /* A non-contiguous buffer (a strided memoryview): its bytes, copied. */
            if (!PyErr_ExceptionMatches(PyExc_BufferError)) {
                return NULL;
            }
            PyErr_Clear();
            copy = PyBytes_FromObject(arg);
            if (copy == NULL) {
                return NULL;
            }
            chunk = PyBytes_AS_STRING(copy);
            n = PyBytes_GET_SIZE(copy);
        }
    }
    PyObject *out = PyList_New(0);
    if (out != NULL && n > 0) {
        self->busy = 1;
        int status = parse(self, chunk, n, out);
        self->busy = 0;
        if (status < 0) {
            Py_CLEAR(out);
        }
    }
    if (viewed) {
        PyBuffer_Release(&view);
    }
    Py_XDECREF(copy);
    return out;
}

static PyObject *
Decoder_close(DecoderObject *self, PyObject *Py_UNUSED(ignored))
{
    if (check_usable(self) < 0) {
        return NULL;
    }
    self->closed = 1;
    return PyList_New(0);
}

static void
reset(DecoderObject *self)
{
    self->comments = 0;
    self->max = DEFAULT_MAX_EVENT_SIZE;
    self->closed = 0;
    self->busy = 0;
    self->bom_decided = 0;
    self->bom_len = 0;
    self->skip_lf = 0;
    self->skipping = 0;
    self->pending = 0;
    self->type_raw_len = 0;
    buffer_free(&self->line);
    buffer_free(&self->data);
    buffer_free(&self->type);
    Py_CLEAR(self->retry);
    Py_CLEAR(self->error);
    Py_CLEAR(self->block_retry);
    Py_CLEAR(self->type_str);
    Py_XSETREF(self->last_event_id, Py_NewRef(str_empty));
    Py_XSETREF(self->id_buffer, Py_NewRef(str_empty));
}

static PyObject *
Decoder_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwargs))
{
    DecoderObject *self = (DecoderObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    /* Usable even if __init__ is never called: the defaults. */
    self->max_obj = PyLong_FromLong(DEFAULT_MAX_EVENT_SIZE);
    if (self->max_obj == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    reset(self);
    return (PyObject *)self;
}

/* max_event_size (NULL: the default) and last_event_id checked as the pure
 * decoder checks them: *max_obj is a new reference to the bound as an int,
 * *max the bound in bytes. */
static int
check_settings(PyObject *max_arg, PyObject *last_event_id, PyObject **max_obj, Py_ssize_t *max)
{
    if (max_arg != NULL && !PyIndex_Check(max_arg)) {
        return wrong_type("max_event_size must be an int (a number of bytes), got %U",
                          "max_event_size", max_arg);
    }
    PyObject *bound = max_arg != NULL ? PyNumber_Index(max_arg)
                                      : PyLong_FromLong(DEFAULT_MAX_EVENT_SIZE);
    if (bound == NULL) {
        return -1;
    }
    int overflow = 0;
    long long value = PyLong_AsLongLongAndOverflow(bound, &overflow);
    if (value == -1 && PyErr_Occurred()) {
        Py_DECREF(bound);
        return -1;
    }
    if (overflow < 0 || (overflow == 0 && value < 1)) {
        PyErr_Format(PyExc_ValueError, "max_event_size must be at least 1, got %S", bound);
        Py_DECREF(bound);
        return -1;
    }
    if (!PyUnicode_Check(last_event_id)) {
        Py_DECREF(bound);
        return wrong_type("last_event_id must be a str, got %U", "last_event_id",
                          last_event_id);
    }
    /* A bound past what memory can hold is no bound: the largest size. */
    *max = (overflow > 0 || value > (long long)PY_SSIZE_T_MAX) ? PY_SSIZE_T_MAX
                                                               : (Py_ssize_t)value;
    *max_obj = bound;
    return 0;
}

static int
Decoder_init(DecoderObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"comments", "max_event_size", "last_event_id", NULL};
    int comments = 0;
    PyObject *max_arg = NULL;
    PyObject *last_event_id = str_empty;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$pOO:Decoder", keywords, &comments,
                                     &max_arg, &last_event_id)) {
        return -1;
    }
    if (self->busy) {
        return check_usable(self);
    }
    PyObject *max_obj;
    Py_ssize_t max;
    if (check_settings(max_arg, last_event_id, &max_obj, &max) < 0) {
        return -1;
    }
    reset(self);
    self->comments = comments;
    self->max = max;
    Py_XSETREF(self->max_obj, max_obj);
    Py_SETREF(self->last_event_id, Py_NewRef(last_event_id));
    Py_SETREF(self->id_buffer, Py_NewRef(last_event_id));
    return 0;
}

static int
Decoder_traverse(DecoderObject *self, visitproc visit, void *arg)
{
    /* A static type: its instances do not visit it (a heap subclass's do). */
    Py_VISIT(self->max_obj);
    Py_VISIT(self->last_event_id);
    Py_VISIT(self->retry);
    Py_VISIT(self->error);
    Py_VISIT(self->id_buffer);
    Py_VISIT(self->block_retry);
    Py_VISIT(self->type_str);
    return 0;
}

static int
Decoder_clear(DecoderObject *self)
{
    /* Only the error can lead back here (its traceback's frames). */
    Py_CLEAR(self->error);
    return 0;
}

static void
Decoder_dealloc(DecoderObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->max_obj);
    Py_CLEAR(self->last_event_id);
    Py_CLEAR(self->retry);
    Py_CLEAR(self->error);
    Py_CLEAR(self->id_buffer);
    Py_CLEAR(self->block_retry);
    Py_CLEAR(self->type_str);
    buffer_free(&self->line);
    buffer_free(&self->data);
    buffer_free(&self->type);
    type->tp_free((PyObject *)self);
}

static int
at_boundary(DecoderObject *self)
{
    return !(self->error != NULL || self->line.len > 0 || self->data.len > 0 || self->pending
             || self->bom_len > 0 || self->skipping);
}

static PyObject *
Decoder_repr(DecoderObject *self)
{
    /* State only: buffered content may be large or sensitive. */
    const char *state = self->error != NULL ? "failed" : self->closed ? "closed" : "open";
    PyObject *retry = self->retry != NULL ? self->retry : Py_None;
    return PyUnicode_FromFormat(
        "<ssekit.Decoder %s last_event_id=%R retry=%R at_boundary=%s comments=%s "
        "max_event_size=%S implementation=compiled>",
        state, self->last_event_id, retry, at_boundary(self) ? "True" : "False",
        self->comments ? "True" : "False", self->max_obj);
}

static PyObject *
Decoder_get_last_event_id(DecoderObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->last_event_id);
}

static PyObject *
Decoder_get_retry(DecoderObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->retry != NULL ? self->retry : Py_None);
}

static PyObject *
Decoder_get_closed(DecoderObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->closed);
}

static PyObject *
Decoder_get_at_boundary(DecoderObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(at_boundary(self));
}

static PyObject *
Decoder_get_ended_mid_event(DecoderObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(!at_boundary(self));
}

/* White-box, for tests and the fuzz harness (as the pure decoder's fields). */
static PyObject *
Decoder_get_line(DecoderObject *self, void *Py_UNUSED(closure))
{
    return PyBytes_FromStringAndSize(self->line.bytes, self->line.len);
}

static PyObject *
Decoder_get_data_size(DecoderObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->data.len);
}

/* -- copying and pickling ---------------------------------------------------------- */

/* The state is the pure decoder's, as object.__getstate__ gives it for its
 * __slots__: (None, {"_block_retry": ..., ...}). A copy or a pickle goes on
 * exactly where the original was, and the differential tests compare the two
 * decoders' whole state after every call. */

/* dict[key] = value, stealing value (NULL: an error already set). */
static int
put(PyObject *dict, const char *key, PyObject *value)
{
    if (value == NULL) {
        return -1;
    }
    int status = PyDict_SetItemString(dict, key, value);
    Py_DECREF(value);
    return status;
}

/* The data buffer as the pure decoder keeps it: a list of its values (each
 * is followed by LF in the buffer, and no value holds a line break). */
static PyObject *
data_values(DecoderObject *self)
{
    PyObject *values = PyList_New(0);
    Py_ssize_t start = 0;
    for (Py_ssize_t i = 0; values != NULL && i < self->data.len; i++) {
        if (self->data.bytes[i] != '\n') {
            continue;
        }
        PyObject *value = PyBytes_FromStringAndSize(self->data.bytes + start, i - start);
        if (value == NULL || PyList_Append(values, value) < 0) {
            Py_CLEAR(values);
        }
        Py_XDECREF(value);
        start = i + 1;
    }
    return values;
}

static PyObject *
Decoder_getstate(DecoderObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->busy) {
        check_usable(self);
        return NULL;
    }
    PyObject *slots = PyDict_New();
    if (slots == NULL) {
        return NULL;
    }
    int slow = self->error != NULL || self->closed || !self->bom_decided || self->skip_lf
               || self->skipping;
    if (put(slots, "_block_retry", Py_NewRef(self->block_retry ? self->block_retry : Py_None)) < 0
        || put(slots, "_bom_pending",
               self->bom_decided ? Py_NewRef(Py_None)
                                 : PyBytes_FromStringAndSize((const char *)self->bom_held,
                                                             self->bom_len)) < 0
        || put(slots, "_closed", PyBool_FromLong(self->closed)) < 0
        || put(slots, "_comments", PyBool_FromLong(self->comments)) < 0
        || put(slots, "_data", data_values(self)) < 0
        || put(slots, "_data_size", PyLong_FromSsize_t(self->data.len)) < 0
        || put(slots, "_error", Py_NewRef(self->error ? self->error : Py_None)) < 0
        || put(slots, "_event_type", PyBytes_FromStringAndSize(self->type.bytes, self->type.len)) < 0
        || put(slots, "_id_buffer", Py_NewRef(self->id_buffer)) < 0
        || put(slots, "_last_event_id", Py_NewRef(self->last_event_id)) < 0
        || put(slots, "_line", PyByteArray_FromStringAndSize(self->line.bytes, self->line.len)) < 0
        || put(slots, "_max", Py_NewRef(self->max_obj)) < 0
        || put(slots, "_pending", PyBool_FromLong(self->pending)) < 0
        || put(slots, "_retry", Py_NewRef(self->retry ? self->retry : Py_None)) < 0
        || put(slots, "_skip_lf", PyBool_FromLong(self->skip_lf)) < 0
        || put(slots, "_skipping", PyBool_FromLong(self->skipping)) < 0
        || put(slots, "_slow", PyBool_FromLong(slow)) < 0) {
        Py_DECREF(slots);
        return NULL;
    }
    return Py_BuildValue("(ON)", Py_None, slots);
}

/* Append a bytes-like object's bytes to b; with a final LF when `line_end`,
 * refusing a value that holds a line break (no data value can). */
static int
buffer_from(Buffer *b, PyObject *obj, int line_end)
{
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    int status = 0;
    if (line_end && (memchr(view.buf, '\n', (size_t)view.len) != NULL
                     || memchr(view.buf, '\r', (size_t)view.len) != NULL)) {
        PyErr_SetString(PyExc_ValueError, "not a Decoder state: a data value holds a line break");
        status = -1;
    }
    if (status == 0) {
        status = buffer_append(b, view.buf, view.len, PY_SSIZE_T_MAX);
    }
    if (status == 0 && line_end) {
        status = buffer_append(b, "\n", 1, PY_SSIZE_T_MAX);
    }
    PyBuffer_Release(&view);
    return status;
}

static int
optional_int(PyObject *value, const char *key)
{
    if (value != Py_None && !PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "not a Decoder state: %s must be an int or None", key);
        return -1;
    }
    return 0;
}

/* (copyreg.__newobj__, (type,), state): what object.__reduce_ex__ gives a
 * pure Decoder at protocol 2 and above, here at every protocol (at 0 and 1
 * copyreg would call the C base class with the decoder as an argument). */
static PyObject *
Decoder_reduce(DecoderObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *state = Decoder_getstate(self, NULL);
    if (state == NULL) {
        return NULL;
    }
    return Py_BuildValue("(O(O)N)", copyreg_newobj, (PyObject *)Py_TYPE(self), state);
}

/* The slots a state must have, in the order Decoder_setstate reads them. */
enum {
    S_BLOCK_RETRY, S_BOM_PENDING, S_ERROR, S_ID_BUFFER, S_LAST_EVENT_ID, S_RETRY, S_DATA, S_MAX,
    S_LINE, S_TYPE, S_CLOSED, S_COMMENTS, S_PENDING, S_SKIP_LF, S_SKIPPING, S_COUNT
};

static PyObject *
Decoder_setstate(DecoderObject *self, PyObject *state)
{
    static const char *const keys[S_COUNT] = {
        "_block_retry", "_bom_pending", "_error", "_id_buffer", "_last_event_id",
        "_retry",       "_data",        "_max",   "_line",      "_event_type",
        "_closed",      "_comments",    "_pending", "_skip_lf", "_skipping",
    };
    if (self->busy) {
        check_usable(self);
        return NULL;
    }
    if (!PyTuple_Check(state) || PyTuple_GET_SIZE(state) != 2
        || PyTuple_GET_ITEM(state, 0) != Py_None || !PyDict_Check(PyTuple_GET_ITEM(state, 1))) {
        PyErr_SetString(PyExc_TypeError,
                        "Decoder.__setstate__ takes (None, {slot: value}), as __getstate__ gives");
        return NULL;
    }
    /* Strong references: the checks below may run Python code (__bool__, a
     * buffer's export) that could change the dict under borrowed ones. */
    PyObject *slots = Py_NewRef(PyTuple_GET_ITEM(state, 1));
    PyObject *item[S_COUNT] = {NULL};
    PyObject *max_obj = NULL;
    Buffer new_line = {NULL, 0, 0}, new_data = {NULL, 0, 0}, new_type = {NULL, 0, 0};
    PyObject *result = NULL;
    int flags[S_COUNT] = {0};
    Py_ssize_t max = 0, bom_len = 0;
    for (int i = 0; i < S_COUNT; i++) {
        item[i] = Py_XNewRef(PyDict_GetItemString(slots, keys[i]));
        if (item[i] == NULL) {
            PyErr_Format(PyExc_ValueError, "not a Decoder state: no %s", keys[i]);
            goto done;
        }
    }
    for (int i = S_CLOSED; i < S_COUNT; i++) {
        if ((flags[i] = PyObject_IsTrue(item[i])) < 0) {
            goto done;
        }
    }
    if (optional_int(item[S_BLOCK_RETRY], "_block_retry") < 0
        || optional_int(item[S_RETRY], "_retry") < 0) {
        goto done;
    }
    if (!PyUnicode_Check(item[S_ID_BUFFER])) {
        PyErr_SetString(PyExc_TypeError, "not a Decoder state: _id_buffer must be a str");
        goto done;
    }
    PyObject *error = item[S_ERROR];
    if (error != Py_None && !PyObject_TypeCheck(error, (PyTypeObject *)LimitExceeded)) {
        PyErr_SetString(PyExc_TypeError,
                        "not a Decoder state: _error must be a LimitExceeded or None");
        goto done;
    }
    PyObject *bom_pending = item[S_BOM_PENDING];
    if (bom_pending != Py_None
        && (!PyBytes_Check(bom_pending) || (bom_len = PyBytes_GET_SIZE(bom_pending)) > 2
            || memcmp(PyBytes_AS_STRING(bom_pending), BOM, (size_t)bom_len) != 0)) {
        PyErr_SetString(PyExc_ValueError,
                        "not a Decoder state: _bom_pending must be None or a BOM's first bytes");
        goto done;
    }
    PyObject *data = item[S_DATA];
    if (!PyList_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "not a Decoder state: _data must be a list of bytes");
        goto done;
    }
    if (check_settings(item[S_MAX], item[S_LAST_EVENT_ID], &max_obj, &max) < 0
        || buffer_from(&new_line, item[S_LINE], 0) < 0
        || buffer_from(&new_type, item[S_TYPE], 0) < 0) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(data); i++) {
        PyObject *value = Py_NewRef(PyList_GET_ITEM(data, i));
        int status = buffer_from(&new_data, value, 1);
        Py_DECREF(value);
        if (status < 0) {
            goto done;
        }
    }
    if (self->busy) {
        /* a buffer's export ran Python code that is feeding this decoder */
        check_usable(self);
        goto done;
    }
    reset(self);
    self->line = new_line;
    self->data = new_data;
    self->type = new_type;
    new_line = new_data = new_type = (Buffer){NULL, 0, 0};
    self->max = max;
    Py_SETREF(self->max_obj, max_obj);
    max_obj = NULL;
    self->closed = flags[S_CLOSED];
    self->comments = flags[S_COMMENTS];
    self->pending = flags[S_PENDING];
    self->skip_lf = flags[S_SKIP_LF];
    self->skipping = flags[S_SKIPPING];
    self->bom_decided = bom_pending == Py_None;
    self->bom_len = (int)bom_len;
    if (bom_len > 0) {
        memcpy(self->bom_held, PyBytes_AS_STRING(bom_pending), (size_t)bom_len);
    }
    Py_SETREF(self->last_event_id, Py_NewRef(item[S_LAST_EVENT_ID]));
    Py_SETREF(self->id_buffer, Py_NewRef(item[S_ID_BUFFER]));
    self->retry = item[S_RETRY] == Py_None ? NULL : Py_NewRef(item[S_RETRY]);
    self->block_retry = item[S_BLOCK_RETRY] == Py_None ? NULL : Py_NewRef(item[S_BLOCK_RETRY]);
    self->error = error == Py_None ? NULL : Py_NewRef(error);
    result = Py_NewRef(Py_None);
done:
    buffer_free(&new_line);
    buffer_free(&new_data);
    buffer_free(&new_type);
    Py_XDECREF(max_obj);
    for (int i = 0; i < S_COUNT; i++) {
        Py_XDECREF(item[i]);
    }
    Py_DECREF(slots);
    return result;
}

static PyGetSetDef Decoder_getset[] = {
    {"last_event_id", (getter)Decoder_get_last_event_id, NULL,
     "The EventSource's last event ID: \"\" until a block with an id is dispatched.", NULL},
    {"retry", (getter)Decoder_get_retry, NULL,
     "The reconnection time in ms from the latest valid retry field, else None.", NULL},
    {"closed", (getter)Decoder_get_closed, NULL, "True once close() was called.", NULL},
    {"at_boundary", (getter)Decoder_get_at_boundary, NULL,
     "True between blocks: no partial line and no fields since the last blank line.", NULL},
    {"ended_mid_event", (getter)Decoder_get_ended_mid_event, NULL,
     "True when the stream so far stops inside a line or an undispatched block.", NULL},
    {"_line", (getter)Decoder_get_line, NULL, "The unterminated line held (a copy).", NULL},
    {"_data_size", (getter)Decoder_get_data_size, NULL, "The data buffer's counted size.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Decoder_methods[] = {
    {"feed", (PyCFunction)Decoder_feed, METH_O,
     "feed($self, data, /)\n--\n\n"
     "Consume one chunk; return the events (and comments) it completed.\n\n"
     "Raises LimitExceeded when a line or an event's data passes max_event_size,\n"
     "and StateError after close() or after an earlier error; InputTypeError (a\n"
     "TypeError) for a str or anything else that is not bytes, leaving the decoder\n"
     "as it was."},
    {"close", (PyCFunction)Decoder_close, METH_NOARGS,
     "close($self, /)\n--\n\n"
     "End the stream. Returns []: the spec drops an unterminated event."},
    {"__reduce__", (PyCFunction)Decoder_reduce, METH_NOARGS,
     "For copy and pickle: a new Decoder, then __setstate__ with __getstate__'s state."},
    {"__getstate__", (PyCFunction)Decoder_getstate, METH_NOARGS,
     "The pure decoder's state: (None, {slot: value}); copy and pickle use it."},
    {"__setstate__", (PyCFunction)Decoder_setstate, METH_O,
     "Go on from a state __getstate__ gave (this decoder's or the pure one's)."},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS,
     "Decoder[Event] and Decoder[Event | Comment], as for the pure class."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ssekit._cdecoder.Decoder",
    .tp_basicsize = sizeof(DecoderObject),
    .tp_dealloc = (destructor)Decoder_dealloc,
    .tp_repr = (reprfunc)Decoder_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Decoder(*, comments=False, max_event_size=16777216, last_event_id='')\n--\n\n"
              "The compiled core of ssekit.Decoder (see ssekit/_decoder.py).",
    .tp_traverse = (traverseproc)Decoder_traverse,
    .tp_clear = (inquiry)Decoder_clear,
    .tp_methods = Decoder_methods,
    .tp_getset = Decoder_getset,
    .tp_init = (initproc)Decoder_init,
    .tp_new = Decoder_new,
};

/* -- the module ------------------------------------------------------------------ */

/* The offset of a writable object slot `name` of `type`, or -1 with ImportError:
 * events are built straight into their slots, so the layout is checked here,
 * once, and the pure decoder is used (with a warning) if it ever changes. */
static Py_ssize_t
slot_offset(PyTypeObject *type, const char *name)
{
    PyObject *descr = PyDict_GetItemString(type->tp_dict, name);
    if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyErr_Format(PyExc_ImportError, "ssekit._cdecoder: %s.%s is not a slot",
                     type->tp_name, name);
        return -1;
    }
    PyMemberDescrObject *member = (PyMemberDescrObject *)descr;
    if (member->d_common.d_type != type || member->d_member->type != Py_T_OBJECT_EX
        || (member->d_member->flags & Py_READONLY) || member->d_member->offset <= 0) {
        PyErr_Format(PyExc_ImportError, "ssekit._cdecoder: %s.%s is not a plain object slot",
                     type->tp_name, name);
        return -1;
    }
    return member->d_member->offset;
}

/* The type's __slots__ are exactly `names` (so no other field is left unset). */
static int
check_slots(PyTypeObject *type, const char *names)
{
    PyObject *slots = PyObject_GetAttrString((PyObject *)type, "__slots__");
    if (slots == NULL) {
        return -1;
    }
    PyObject *expected = PyUnicode_FromString(names);
    PyObject *joined = NULL;
    int same = -1;
    if (expected != NULL) {
        PyObject *space = PyUnicode_FromString(" ");
        if (space != NULL) {
            joined = PyUnicode_Join(space, slots);
            Py_DECREF(space);
        }
        if (joined != NULL) {
            same = PyUnicode_Compare(joined, expected) == 0;
            if (PyErr_Occurred()) {
                same = -1;
            }
        }
    }
    Py_XDECREF(joined);
    Py_XDECREF(expected);
    Py_DECREF(slots);
    if (same == 0) {
        PyErr_Format(PyExc_ImportError, "ssekit._cdecoder: %s's slots are not (%s)",
                     type->tp_name, names);
        return -1;
    }
    return same < 0 ? -1 : 0;
}

static PyObject *
import_attr(const char *module, const char *name)
{
    PyObject *mod = PyImport_ImportModule(module);
    if (mod == NULL) {
        return NULL;
    }
    PyObject *attr = PyObject_GetAttrString(mod, name);
    Py_DECREF(mod);
    return attr;
}

static PyMethodDef module_methods[] = {
    {"_decode", module_decode, METH_O,
     "_decode($module, data, /)\n--\n\nUTF-8 with replacement, as the decoder does (tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ssekit._cdecoder",
    .m_doc = "The compiled core of ssekit.Decoder; ssekit/_compiled.py wraps it.",
    .m_size = -1,
    .m_methods = module_methods,
};

static PyObject *
intern(const char *text)
{
    return PyUnicode_InternFromString(text);
}

PyMODINIT_FUNC
PyInit__cdecoder(void)
{
    Event_type = (PyTypeObject *)import_attr("ssekit._event", "Event");
    Comment_type = (PyTypeObject *)import_attr("ssekit._event", "Comment");
    LimitExceeded = import_attr("ssekit._errors", "LimitExceeded");
    StateError = import_attr("ssekit._errors", "StateError");
    InputTypeError = import_attr("ssekit._errors", "InputTypeError");
    copyreg_newobj = import_attr("copyreg", "__newobj__");
    if (Event_type == NULL || Comment_type == NULL || LimitExceeded == NULL
        || StateError == NULL || InputTypeError == NULL || copyreg_newobj == NULL) {
        return NULL;
    }
    if (!PyType_Check(Event_type) || !PyType_Check(Comment_type)) {
        PyErr_SetString(PyExc_ImportError, "ssekit._cdecoder: Event and Comment must be classes");
        return NULL;
    }
    if (check_slots(Event_type, "data event id retry") < 0
        || check_slots(Comment_type, "text") < 0
        || (off_data = slot_offset(Event_type, "data")) < 0
        || (off_event = slot_offset(Event_type, "event")) < 0
        || (off_id = slot_offset(Event_type, "id")) < 0
        || (off_retry = slot_offset(Event_type, "retry")) < 0
        || (off_text = slot_offset(Comment_type, "text")) < 0) {
        return NULL;
    }
    str_message = intern("message");
    str_empty = intern("");
    str_events = intern("events");
    str_line = intern("line");
    str_event_data = intern("event data");
    str_max_event_size = intern("max_event_size");
    if (str_message == NULL || str_empty == NULL || str_events == NULL || str_line == NULL
        || str_event_data == NULL || str_max_event_size == NULL) {
        return NULL;
    }
    if (PyType_Ready(&DecoderType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    PyObject *max_retry = PyLong_FromUnsignedLongLong(UINT64_MAX);
    if (max_retry == NULL
        || PyModule_AddObjectRef(m, "Decoder", (PyObject *)&DecoderType) < 0
        || PyModule_AddIntConstant(m, "DEFAULT_MAX_EVENT_SIZE", DEFAULT_MAX_EVENT_SIZE) < 0
        || PyModule_AddObjectRef(m, "MAX_RETRY", max_retry) < 0) {
        Py_XDECREF(max_retry);
        Py_DECREF(m);
        return NULL;
    }
    Py_DECREF(max_retry);
    return m;
}
