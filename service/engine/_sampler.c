/* MiniVault's sampler's hot path (service/engine/sampling.py) in C: what runs on every token
 * right after a model step, when the caches are cold and each numpy call costs microseconds.
 *
 * penalised(...): the ids the repetition, presence and frequency penalties and the logit bias
 * touch, and their adjusted logits, with the same double operations in the same order as
 * Sampler._penalised (built with -ffp-contract=off: no fused multiply-add), so the same values.
 *
 * top_k(logits, k, ids, values) -> (ids, values): the k best tokens by adjusted logit, best
 * first, ties to the lower id, exactly as Sampler._top finds them with numpy: an untouched
 * token's adjusted logit is its float32 logit as a double, NaN as -1e300 and clipped to
 * +-1e300; a touched one's is given. Comparisons only: the same tokens in the same order.
 *
 * sample(logits, k, ids, values, temperature, top_p, u) -> id: top_k, then temperature, softmax,
 * top-p and the draw with the uniform u, exactly as Sampler._drawn does them.
 *
 * An optional build: without a C compiler or Python's headers at install, sampling.py does the
 * same in Python and numpy.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define BIG 1e300

typedef struct {
    double v;
    long long id;
} cand;

/* a ranks below b: a lower value, or the same value and a higher id */
static inline int worse(const cand *a, const cand *b) {
    return a->v < b->v || (a->v == b->v && a->id > b->id);
}

/* NaN as -BIG, everything clipped to +-BIG (sampling.py's _finite) */
static inline double clip(double x) {
    return (x >= -BIG && x <= BIG) ? x : (x > BIG ? BIG : -BIG);
}

/* the largest float not above v: a logit below it ranks below v */
static inline float floor_of(double v) {
    float f = (float)v;
    if ((double)f > v)
        f = nextafterf(f, -INFINITY);
    return f;
}

/* heap[0] is the worst of the k kept */
static void sift_down(cand *h, Py_ssize_t n, Py_ssize_t i) {
    for (;;) {
        Py_ssize_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && worse(&h[l], &h[w])) w = l;
        if (r < n && worse(&h[r], &h[w])) w = r;
        if (w == i) return;
        cand t = h[i]; h[i] = h[w]; h[w] = t;
        i = w;
    }
}

static void push(cand *h, Py_ssize_t *size, cand c) {
    Py_ssize_t i = (*size)++;
    h[i] = c;
    while (i > 0) {
        Py_ssize_t p = (i - 1) / 2;
        if (!worse(&h[i], &h[p])) return;
        cand t = h[i]; h[i] = h[p]; h[p] = t;
        i = p;
    }
}

/* keep c if it ranks among the k best so far; returns whether the worst kept changed */
static int offer(cand *h, Py_ssize_t *size, Py_ssize_t k, cand c) {
    if (*size < k) {
        push(h, size, c);
        return *size == k;
    }
    if (!worse(&h[0], &c)) return 0;
    h[0] = c;
    sift_down(h, k, 0);
    return 1;
}

static int is_float32(const Py_buffer *view) {
    const char *f = view->format;
    if (view->itemsize != 4 || view->ndim != 1 || f == NULL) return 0;
    if (*f == '<' || *f == '=' || *f == '@') f++;  /* x86-64 and arm64: little-endian, native */
    return strcmp(f, "f") == 0;
}

/* whether a call has its `want` arguments; if not, TypeError naming the signature */
static int takes(Py_ssize_t nargs, Py_ssize_t want, const char *signature) {
    if (nargs == want) return 1;
    PyErr_Format(PyExc_TypeError, "%s takes %zd arguments, not %zd", signature, want, nargs);
    return 0;
}

/* the logits' buffer, or -1 with TypeError (nothing held) unless it is contiguous float32 */
static int logits_buffer(PyObject *obj, Py_buffer *view) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    if (is_float32(view)) return 0;
    PyBuffer_Release(view);
    PyErr_SetString(PyExc_TypeError, "logits must be a one-dimensional float32 buffer");
    return -1;
}

/* (ids, values): two lists from n candidates, in their order */
static PyObject *id_value_lists(const cand *c, Py_ssize_t n) {
    PyObject *out = NULL, *ids = PyList_New(n), *vals = PyList_New(n);
    if (ids == NULL || vals == NULL) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *id = PyLong_FromLongLong(c[i].id), *v = PyFloat_FromDouble(c[i].v);
        if (id == NULL || v == NULL) {
            Py_XDECREF(id);
            Py_XDECREF(v);
            goto done;
        }
        PyList_SET_ITEM(ids, i, id);
        PyList_SET_ITEM(vals, i, v);
    }
    out = PyTuple_Pack(2, ids, vals);
done:
    Py_XDECREF(ids);
    Py_XDECREF(vals);
    return out;
}

/* the k best of the logits (1 <= k <= their number) with the touched (ids, values) in place of
 * theirs, best first, into heap (k long); returns how many (k), or -1 with an exception set */
static Py_ssize_t best_k(const Py_buffer *view, Py_ssize_t k, PyObject *ids, PyObject *vals, cand *heap) {
    Py_ssize_t n = view->len / 4, size = 0, m;
    long long *tids = NULL;
    if (!PyList_Check(ids) || !PyList_Check(vals) || PyList_GET_SIZE(ids) != PyList_GET_SIZE(vals)) {
        PyErr_SetString(PyExc_TypeError, "ids and values must be lists of the same length");
        return -1;
    }
    m = PyList_GET_SIZE(ids);
    tids = PyMem_Malloc((size_t)(m ? m : 1) * sizeof(long long));
    if (tids == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t t = 0; t < m; t++) {
        long long id = PyLong_AsLongLong(PyList_GET_ITEM(ids, t));
        double v = PyFloat_AsDouble(PyList_GET_ITEM(vals, t));
        if (PyErr_Occurred()) goto fail;
        if (id < 0 || id >= n || (t && id <= tids[t - 1])) {
            PyErr_SetString(PyExc_ValueError, "ids must be sorted, unique and inside the logits");
            goto fail;
        }
        tids[t] = id;
        cand c = {v, id};
        offer(heap, &size, k, c);
    }
    const float *raw = view->buf;
    float floor = size == k ? floor_of(heap[0].v) : -INFINITY;
    Py_ssize_t j = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        float x = raw[i];
        if (size == k && x < floor) continue;  /* most logits: one comparison (NaN goes on) */
        while (j < m && tids[j] < i) j++;
        if (j < m && tids[j] == i) continue;  /* touched: its value is already in */
        cand c = {clip((double)x), i};
        if (offer(heap, &size, k, c)) floor = floor_of(heap[0].v);
    }
    for (Py_ssize_t s = size; s > 1; s--) {  /* heap sort: the worst goes to the back, best first */
        cand t = heap[0]; heap[0] = heap[s - 1]; heap[s - 1] = t;
        sift_down(heap, s - 1, 0);
    }
    PyMem_Free(tids);
    return size;
fail:
    PyMem_Free(tids);
    return -1;
}

/* the logits' buffer and k (checked: 1 to their number) from args[0] and args[1], and a heap of
 * k; -1 with an exception set */
static int logits_and_k(PyObject *const *args, Py_buffer *view, Py_ssize_t *k, cand **heap) {
    if (logits_buffer(args[0], view) < 0) return -1;
    Py_ssize_t n = view->len / 4;
    *k = PyLong_AsSsize_t(args[1]);
    if (*k == -1 && PyErr_Occurred()) goto fail;
    if (*k < 1 || *k > n) {
        PyErr_Format(PyExc_ValueError, "k is %zd: 1 to %zd (the logits) fit", *k, n);
        goto fail;
    }
    *heap = PyMem_Malloc((size_t)*k * sizeof(cand));
    if (*heap != NULL) return 0;
    PyErr_NoMemory();
fail:
    PyBuffer_Release(view);
    return -1;
}

static PyObject *top_k(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (!takes(nargs, 4, "top_k(logits, k, ids, values)")) return NULL;
    Py_buffer view;
    Py_ssize_t k;
    cand *heap;
    if (logits_and_k(args, &view, &k, &heap) < 0) return NULL;
    Py_ssize_t size = best_k(&view, k, args[2], args[3], heap);
    PyObject *out = size < 0 ? NULL : id_value_lists(heap, size);
    PyMem_Free(heap);
    PyBuffer_Release(&view);
    return out;
}

/* numpy's sum of n doubles (np.add.reduce: 0.0 plus its pairwise sum, blocks of 8 up to 128), so
 * the same bits as sampling.py's probs.sum() */
static double pairwise_sum(const double *a, Py_ssize_t n) {
    if (n < 8) {
        double res = 0.;
        for (Py_ssize_t i = 0; i < n; i++) res += a[i];
        return res;
    }
    if (n <= 128) {
        double r[8];
        Py_ssize_t i;
        for (int j = 0; j < 8; j++) r[j] = a[j];
        for (i = 8; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; j++) r[j] += a[i + j];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += a[i];
        return res;
    }
    Py_ssize_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

/* sample(logits, k, ids, values, temperature, top_p, u) -> the id drawn among the k best with the
 * uniform u: Sampler._top, then _drawn, in C: the same double operations in the same order
 * (libm's exp, numpy's pairwise sums, sequential cumulative sums), so the same token for a seed */
static PyObject *sample(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (!takes(nargs, 7, "sample(logits, k, ids, values, temperature, top_p, u)")) return NULL;
    double temperature = PyFloat_AsDouble(args[4]), top_p = PyFloat_AsDouble(args[5]), u = PyFloat_AsDouble(args[6]);
    if (PyErr_Occurred()) return NULL;
    if (!(temperature > 0.0) || !(u >= 0.0 && u < 1.0)) {
        PyErr_SetString(PyExc_ValueError, "temperature must be above 0 and u in [0, 1)");
        return NULL;
    }
    Py_buffer view;
    Py_ssize_t k;
    cand *heap;
    if (logits_and_k(args, &view, &k, &heap) < 0) return NULL;
    PyObject *out = NULL;
    double *p = NULL;
    Py_ssize_t n = best_k(&view, k, args[2], args[3], heap);
    if (n < 0) goto done;
    p = PyMem_Malloc((size_t)n * sizeof(double));
    if (p == NULL) { PyErr_NoMemory(); goto done; }
    double best = heap[0].v, s;
    for (Py_ssize_t i = 0; i < n; i++) p[i] = exp((heap[i].v - best) / temperature);  /* p[0] == 1 */
    s = pairwise_sum(p, n);
    for (Py_ssize_t i = 0; i < n; i++) p[i] /= s;
    if (top_p < 1.0) {  /* keep the fewest whose cumulative mass reaches top_p */
        Py_ssize_t keep = 0;
        double c = 0.;
        for (; keep < n; keep++) {
            c = keep ? c + p[keep] : p[0];
            if (c >= top_p) break;
        }
        n = keep < n ? keep + 1 : n;
        s = pairwise_sum(p, n);
        for (Py_ssize_t i = 0; i < n; i++) p[i] /= s;
    }
    for (Py_ssize_t i = 1; i < n; i++) p[i] += p[i - 1];  /* the cdf, normalised by its last value */
    double last = p[n - 1];
    Py_ssize_t at = 0;
    while (at < n - 1 && !(p[at] / last > u)) at++;
    out = PyLong_FromLongLong(heap[at].id);
done:
    PyMem_Free(p);
    PyMem_Free(heap);
    PyBuffer_Release(&view);
    return out;
}

static int cmp_ll(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* ids[0..n) sorted in place, duplicates dropped; returns how many are left */
static Py_ssize_t sort_unique(long long *ids, Py_ssize_t n) {
    qsort(ids, (size_t)n, sizeof(long long), cmp_ll);
    Py_ssize_t u = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (u == 0 || ids[i] != ids[u - 1]) ids[u++] = ids[i];
    return u;
}

static Py_ssize_t find(const long long *ids, Py_ssize_t n, long long id) {
    Py_ssize_t lo = 0, hi = n;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (ids[mid] < id) lo = mid + 1; else hi = mid;
    }
    return lo;
}

/* history[start:] that lies inside the vocabulary, as C integers; -1 on error */
static Py_ssize_t tokens_of(PyObject *history, Py_ssize_t start, Py_ssize_t n, long long *out) {
    Py_ssize_t m = 0, len = PyList_GET_SIZE(history);
    for (Py_ssize_t i = start < 0 ? 0 : start; i < len; i++) {
        long long t = PyLong_AsLongLong(PyList_GET_ITEM(history, i));
        if (t == -1 && PyErr_Occurred()) return -1;
        if (t >= 0 && t < n) out[m++] = t;
    }
    return m;
}

/* penalised(logits, history, prompt_len, repetition, presence, frequency, bias) -> (ids, values):
 * Sampler._penalised in C, the same double operations in the same order (so the same values):
 * the ids the penalties and bias touch, sorted, and their adjusted logits. */
static PyObject *penalised(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (!takes(nargs, 7, "penalised(logits, history, prompt_len, repetition, presence, frequency, bias)")) return NULL;
    Py_buffer view;
    if (logits_buffer(args[0], &view) < 0) return NULL;
    PyObject *out = NULL, *history = args[1], *bias = args[6];
    long long *buf = NULL;
    cand *vals = NULL;  /* each touched id with its logit as the penalties adjust it */
    Py_ssize_t n = view.len / 4, prompt_len = PyLong_AsSsize_t(args[2]);
    double rp = PyFloat_AsDouble(args[3]), pp = PyFloat_AsDouble(args[4]), fp = PyFloat_AsDouble(args[5]);
    if (PyErr_Occurred()) goto done;
    if (!PyList_Check(history) || !PyTuple_Check(bias)) {
        PyErr_SetString(PyExc_TypeError, "history must be a list and bias a tuple of (id, value) pairs");
        goto done;
    }
    Py_ssize_t len = PyList_GET_SIZE(history), nb = PyTuple_GET_SIZE(bias);
    Py_ssize_t window = len < 64 ? len : 64, generated = len > prompt_len ? len - prompt_len : 0;
    int repeat = rp != 1.0 && len > 0, count = (pp != 0.0 || fp != 0.0) && generated > 0;
    /* buf: seen | generated (sorted, for the counts) | bias ids | the union of all three */
    Py_ssize_t cap = window + generated + nb;
    buf = PyMem_Malloc((size_t)(2 * cap + 1) * sizeof(long long));
    if (buf == NULL) { PyErr_NoMemory(); goto done; }
    long long *seen = buf, *gen = buf + window, *bid = gen + generated, *all = bid + nb;
    Py_ssize_t ns = 0, ng = 0, nbi = 0;
    if (repeat && (ns = tokens_of(history, len - window, n, seen)) < 0) goto done;
    ns = sort_unique(seen, ns);
    if (count && (ng = tokens_of(history, prompt_len, n, gen)) < 0) goto done;
    qsort(gen, (size_t)ng, sizeof(long long), cmp_ll);
    for (Py_ssize_t i = 0; i < nb; i++) {
        PyObject *pair = PyTuple_GET_ITEM(bias, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "bias must hold (id, value) pairs");
            goto done;
        }
        long long t = PyLong_AsLongLong(PyTuple_GET_ITEM(pair, 0));
        if (t == -1 && PyErr_Occurred()) goto done;
        if (t >= 0 && t < n) bid[nbi++] = t;
    }
    Py_ssize_t na = 0;
    memcpy(all, seen, (size_t)ns * sizeof(long long)); na += ns;
    memcpy(all + na, gen, (size_t)ng * sizeof(long long)); na += ng;
    memcpy(all + na, bid, (size_t)nbi * sizeof(long long)); na += nbi;
    na = sort_unique(all, na);
    vals = PyMem_Malloc((size_t)(na ? na : 1) * sizeof(cand));
    if (vals == NULL) { PyErr_NoMemory(); goto done; }
    const float *raw = view.buf;
    for (Py_ssize_t i = 0; i < na; i++) {
        vals[i].id = all[i];
        vals[i].v = clip((double)raw[all[i]]);
    }
    for (Py_ssize_t i = 0; i < ns; i++) {
        double *v = &vals[find(all, na, seen[i])].v;
        *v = *v > 0 ? *v / rp : *v * rp;
    }
    for (Py_ssize_t i = 0; i < ng;) {  /* gen is sorted: each id's run is its count */
        Py_ssize_t j = i;
        while (j < ng && gen[j] == gen[i]) j++;
        vals[find(all, na, gen[i])].v -= pp + fp * (double)(j - i);
        i = j;
    }
    for (Py_ssize_t i = 0; i < nb; i++) {  /* in order: a repeated id adds twice */
        PyObject *pair = PyTuple_GET_ITEM(bias, i);
        long long t = PyLong_AsLongLong(PyTuple_GET_ITEM(pair, 0));
        double b = PyFloat_AsDouble(PyTuple_GET_ITEM(pair, 1));
        if (PyErr_Occurred()) goto done;
        if (t >= 0 && t < n) vals[find(all, na, t)].v += b;
    }
    for (Py_ssize_t i = 0; i < na; i++) vals[i].v = clip(vals[i].v);
    out = id_value_lists(vals, na);
done:
    PyMem_Free(buf);
    PyMem_Free(vals);
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef methods[] = {
    {"top_k", (PyCFunction)(void (*)(void))top_k, METH_FASTCALL,
     "top_k(logits, k, ids, values) -> (ids, values): the k best tokens by adjusted logit, best first."},
    {"sample", (PyCFunction)(void (*)(void))sample, METH_FASTCALL,
     "sample(logits, k, ids, values, temperature, top_p, u) -> id: a token drawn among the k best."},
    {"penalised", (PyCFunction)(void (*)(void))penalised, METH_FASTCALL,
     "penalised(logits, history, prompt_len, repetition, presence, frequency, bias) -> (ids, values)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_sampler", .m_doc = "The sampler's hot path in C.", .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC PyInit__sampler(void) { return PyModule_Create(&module); }
