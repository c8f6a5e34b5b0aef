/*
 * libnvml_double.c - a TEST DOUBLE of NVIDIA's libnvidia-ml.so.1 (the public NVML C API) for nodeagent's tests.
 *
 * It contains no NVIDIA code. Every symbol name, argument list and struct layout below was taken from the
 * public Python binding nvidia-ml-py 13.615.71 (module pynvml, ctypes declarations) and written here by hand;
 * no NVIDIA header is included. It reads no GPU: every value comes from a scenario text file whose path is in
 * the environment variable NVML_DOUBLE_SCENARIO (format: tests/nvml_double/README.md), re-read
 * whenever the file's identity, size or times change, so a test can change values, lose a GPU and restore it
 * while the process under test keeps running.
 *
 * Symbols (the C names pynvml resolves):
 *   nvmlInitWithFlags nvmlInit_v2 nvmlShutdown nvmlErrorString
 *   nvmlSystemGetDriverVersion nvmlSystemGetCudaDriverVersion nvmlSystemGetCudaDriverVersion_v2
 *   nvmlSystemGetNVMLVersion
 *   nvmlDeviceGetCount_v2 nvmlDeviceGetHandleByIndex_v2 nvmlDeviceGetHandleByUUID nvmlDeviceGetIndex
 *   nvmlDeviceGetUUID nvmlDeviceGetName nvmlDeviceGetSerial nvmlDeviceGetPciInfo_v3 nvmlDeviceGetMinorNumber
 *   nvmlDeviceGetPersistenceMode nvmlDeviceGetComputeMode nvmlDeviceGetUtilizationRates
 *   nvmlDeviceGetEncoderUtilization nvmlDeviceGetDecoderUtilization nvmlDeviceGetMemoryInfo
 *   nvmlDeviceGetMemoryInfo_v2 nvmlDeviceGetPowerUsage nvmlDeviceGetEnforcedPowerLimit
 *   nvmlDeviceGetPowerManagementLimit nvmlDeviceGetTotalEnergyConsumption nvmlDeviceGetTemperature
 *   nvmlDeviceGetTemperatureV nvmlDeviceGetTemperatureThreshold nvmlDeviceGetClockInfo
 *   nvmlDeviceGetMaxClockInfo nvmlDeviceGetPerformanceState nvmlDeviceGetNumFans nvmlDeviceGetFanSpeed
 *   nvmlDeviceGetFanSpeed_v2 nvmlDeviceGetCurrentClocksEventReasons nvmlDeviceGetCurrentClocksThrottleReasons
 *   nvmlDeviceGetTotalEccErrors nvmlDeviceGetRetiredPagesPendingStatus nvmlDeviceGetRemappedRows
 *   nvmlDeviceGetCurrPcieLinkGeneration nvmlDeviceGetCurrPcieLinkWidth nvmlDeviceGetPcieReplayCounter
 *   nvmlDeviceGetFieldValues nvmlDeviceGetComputeRunningProcesses_v3 nvmlDeviceGetGraphicsRunningProcesses_v3
 *   nvmlDeviceGetProcessUtilization
 *   nvmlDeviceGetMigMode nvmlDeviceGetMaxMigDeviceCount nvmlDeviceGetMigDeviceHandleByIndex
 *   nvmlDeviceIsMigDeviceHandle nvmlDeviceGetGpuInstanceId nvmlDeviceGetComputeInstanceId
 *   nvmlDeviceGetDeviceHandleFromMigDeviceHandle
 *   nvmlEventSetCreate nvmlDeviceGetSupportedEventTypes nvmlDeviceRegisterEvents nvmlEventSetWait_v2
 *   nvmlEventSetFree
 * Any other NVML symbol is absent on purpose: pynvml then raises NVMLError_FunctionNotFound.
 *
 * Struct layouts (LP64, natural alignment; checked with _Static_assert below and against pynvml's ctypes
 * structures by the tests): nvmlPciInfo_t (v3, 68 bytes), nvmlMemory_t (24), nvmlMemory_v2_t (40, version
 * 0x02000028), nvmlUtilization_t (8), nvmlProcessInfo_t (= v2/v3, 24: pid u32, usedGpuMemory u64,
 * gpuInstanceId u32, computeInstanceId u32), nvmlTemperature_t (v1, 12, version 0x0100000C),
 * nvmlFieldValue_t (40: fieldId u32, scopeId u32, timestamp i64, latencyUsec i64, valueType u32,
 * nvmlReturn u32, 8-byte value union), nvmlProcessUtilizationSample_t (32), nvmlEventData_t (32: device
 * handle, eventType u64, eventData u64, gpuInstanceId u32, computeInstanceId u32).
 *
 * Behaviours faked: the init refcount (calls before nvmlInit* or after the last nvmlShutdown return
 * UNINITIALIZED); NOT_SUPPORTED for every value the scenario leaves out; string buffers too small ->
 * INSUFFICIENT_SIZE; versioned structs with a wrong version -> ARGUMENT_VERSION_MISMATCH; the two-call
 * INSUFFICIENT_SIZE protocol of the process lists and of process utilisation (NOT_FOUND when no sample is
 * newer than lastSeenTimeStamp); per-entry nvmlReturn in field values; MIG device handles (UUID, name,
 * memory, processes, instance ids; utilisation NOT_SUPPORTED on MIG handles and on a MIG-enabled parent);
 * Xid events delivered once each per event set, with nvmlEventSetWait_v2 blocking (10 ms sleeps, no lock
 * held) until an event arrives or the timeout passes, then TIMEOUT; injected errors per function (global,
 * per GPU, per MIG slot; "*" for every call on a GPU, e.g. GPU_IS_LOST), injected delays, and injected hangs
 * (a call that blocks until the scenario no longer holds its hang rule: a wedged driver call and its recovery).
 *
 * Thread safety: one mutex guards the scenario, the refcount and the event sets; no call sleeps holding it.
 */

#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>

/* ---- public ABI (as declared by pynvml) ------------------------------------------------------------- */

typedef int nvmlReturn_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

#define NVML_VALUE_TYPE_DOUBLE 0
#define NVML_VALUE_TYPE_UNSIGNED_INT 1
#define NVML_VALUE_TYPE_UNSIGNED_LONG 2
#define NVML_VALUE_TYPE_UNSIGNED_LONG_LONG 3
#define NVML_VALUE_TYPE_SIGNED_LONG_LONG 4
#define NVML_VALUE_TYPE_SIGNED_INT 5
#define NVML_VALUE_TYPE_UNSIGNED_SHORT 6

#define NVML_EVENT_TYPE_XID_CRITICAL_ERROR 0x8ULL
#define NVML_NO_INSTANCE 0xFFFFFFFFu
#define NVML_STRUCT_VERSION(size, ver) ((unsigned int)(size) | ((unsigned int)(ver) << 24))

struct nvmlDevice_st {
    unsigned char unused;
};
typedef struct nvmlDevice_st *nvmlDevice_t;

struct nvmlEventSet_st;
typedef struct nvmlEventSet_st *nvmlEventSet_t;

typedef struct {
    char busIdLegacy[16];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

typedef struct {
    unsigned int version;
    unsigned int sensorType;
    int temperature;
} nvmlTemperature_t;

typedef union {
    double dVal;
    unsigned int uiVal;
    unsigned long ulVal;
    unsigned long long ullVal;
    signed long long sllVal;
    signed int siVal;
    unsigned short usVal;
} nvmlValue_t;

typedef struct {
    unsigned int fieldId;
    unsigned int scopeId;
    long long timestamp;
    long long latencyUsec;
    unsigned int valueType;
    nvmlReturn_t nvmlReturn;
    nvmlValue_t value;
} nvmlFieldValue_t;

typedef struct {
    unsigned int pid;
    unsigned long long timeStamp;
    unsigned int smUtil;
    unsigned int memUtil;
    unsigned int encUtil;
    unsigned int decUtil;
} nvmlProcessUtilizationSample_t;

typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlEventData_t;

_Static_assert(sizeof(nvmlPciInfo_t) == 68, "nvmlPciInfo_t (v3) is 68 bytes");
_Static_assert(sizeof(nvmlMemory_t) == 24, "nvmlMemory_t is 24 bytes");
_Static_assert(sizeof(nvmlMemory_v2_t) == 40, "nvmlMemory_v2_t is 40 bytes");
_Static_assert(sizeof(nvmlUtilization_t) == 8, "nvmlUtilization_t is 8 bytes");
_Static_assert(sizeof(nvmlProcessInfo_t) == 24, "nvmlProcessInfo_t (v2/v3) is 24 bytes");
_Static_assert(sizeof(nvmlTemperature_t) == 12, "nvmlTemperature_t (v1) is 12 bytes");
_Static_assert(sizeof(nvmlValue_t) == 8, "nvmlValue_t is 8 bytes");
_Static_assert(sizeof(nvmlFieldValue_t) == 40, "nvmlFieldValue_t is 40 bytes");
_Static_assert(offsetof(nvmlFieldValue_t, valueType) == 24, "valueType at offset 24");
_Static_assert(offsetof(nvmlFieldValue_t, value) == 32, "value at offset 32");
_Static_assert(sizeof(nvmlProcessUtilizationSample_t) == 32, "nvmlProcessUtilizationSample_t is 32 bytes");
_Static_assert(sizeof(nvmlEventData_t) == 32, "nvmlEventData_t is 32 bytes");

#define NVML_MEMORY_V2 NVML_STRUCT_VERSION(sizeof(nvmlMemory_v2_t), 2)
#define NVML_TEMPERATURE_V1 NVML_STRUCT_VERSION(sizeof(nvmlTemperature_t), 1)
_Static_assert(NVML_MEMORY_V2 == 0x02000028u, "nvmlMemory_v2 = 0x02000028");
_Static_assert(NVML_TEMPERATURE_V1 == 0x0100000Cu, "nvmlTemperature_v1 = 0x0100000C");

#define EXPORT __attribute__((visibility("default")))

/* ---- scenario model ---------------------------------------------------------------------------------- */

#define SCENARIO_ENV "NVML_DOUBLE_SCENARIO"
#define MAX_GPUS 16
#define MAX_MIG 8
#define MAX_PROCS 256
#define MAX_MIG_PROCS 64
#define MAX_FIELDS 128
#define MAX_XIDS 256
#define MAX_PUTIL 256
#define MAX_RULES 32
#define MAX_FANS 8
#define MAX_THRESHOLDS 16
#define STR 128
#define DEFAULT_SAMPLING_PERIOD_US 167000ULL
#define DEFAULT_MAX_MIG 7ULL
#define WAIT_POLL_MS 10

typedef struct {
    bool set;
    unsigned long long v;
} opt_t;

struct rule {
    char fn[80];
    unsigned int value; /* nvmlReturn_t for errors, milliseconds for delays, unused for hangs */
};

struct rules {
    int n;
    struct rule r[MAX_RULES];
};

struct proc {
    unsigned int pid;
    unsigned long long used;
    unsigned int gi, ci;
    bool has_instance;
};

struct field {
    unsigned int id, scope;
    bool has_scope, is_error;
    unsigned int type;
    nvmlValue_t value;
    nvmlReturn_t ret;
};

struct xid {
    unsigned long long seq, xid;
    unsigned int gi, ci;
};

struct putil {
    unsigned int pid;
    unsigned long long ts;
    unsigned int sm, mem, enc, dec;
};

struct mem {
    opt_t total, used, free, reserved;
};

struct mig {
    bool present;
    char uuid[STR], name[STR];
    opt_t gi, ci;
    struct mem mem;
    int nproc, ngproc;
    struct proc proc[MAX_MIG_PROCS], gproc[MAX_MIG_PROCS];
    struct rules errors;
};

struct gpu {
    bool present;
    char uuid[STR], name[STR], serial[STR];
    bool has_pci;
    unsigned int pci_domain, pci_bus, pci_device;
    opt_t pci_device_id, pci_subsystem_id, minor, persistence, compute_mode, util_gpu, util_mem;
    opt_t power_mw, power_limit_mw, enforced_power_limit_mw, energy_mj, temp_gpu, pstate, num_fans;
    opt_t clocks_event_reasons, retired_pending, pcie_gen, pcie_width, pcie_replay, mig_max, supported_events;
    opt_t enc_util, enc_period, dec_util, dec_period;
    opt_t temp_threshold[MAX_THRESHOLDS], clock[4], max_clock[4], fan[MAX_FANS], ecc[2][2];
    bool has_remapped;
    unsigned int remapped[4];
    bool has_mig_mode;
    unsigned int mig_current, mig_pending;
    struct mem mem;
    int nfield, nproc, ngproc, nputil, nxid;
    struct field field[MAX_FIELDS];
    struct proc proc[MAX_PROCS], gproc[MAX_PROCS];
    struct putil putil[MAX_PUTIL];
    struct xid xid[MAX_XIDS];
    struct rules errors, delays, hangs;
    struct mig mig[MAX_MIG];
};

struct scenario {
    char driver[STR], nvml_version[STR];
    opt_t cuda, init_error;
    struct rules errors, delays, hangs;
    int ngpus;
    struct gpu gpu[MAX_GPUS];
};

struct delivered {
    int gpu;
    unsigned long long seq;
};

struct nvmlEventSet_st {
    struct nvmlEventSet_st *next;
    unsigned long long mask[MAX_GPUS];
    struct delivered *delivered;
    size_t ndelivered, cap;
    int waiters;
    bool freed;
};

/* ---- global state (guarded by g_lock) ------------------------------------------------------------------ */

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct scenario *g_sc;
static int g_refcount;
static struct nvmlEventSet_st *g_sets;
static struct nvmlDevice_st g_handles[MAX_GPUS][MAX_MIG + 1]; /* [gpu][0]: the GPU, [gpu][1 + slot]: MIG */

static struct {
    bool valid;
    char path[4096];
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtim, ctim;
} g_stamp;

#define MAX_REPORTED 128
static char g_reported[MAX_REPORTED][256];
static int g_nreported;

static const char *const k_functions[] = {
    "nvmlInitWithFlags", "nvmlInit_v2", "nvmlShutdown",
    "nvmlSystemGetDriverVersion", "nvmlSystemGetCudaDriverVersion", "nvmlSystemGetCudaDriverVersion_v2",
    "nvmlSystemGetNVMLVersion",
    "nvmlDeviceGetCount_v2", "nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetHandleByUUID", "nvmlDeviceGetIndex",
    "nvmlDeviceGetUUID", "nvmlDeviceGetName", "nvmlDeviceGetSerial", "nvmlDeviceGetPciInfo_v3",
    "nvmlDeviceGetMinorNumber", "nvmlDeviceGetPersistenceMode", "nvmlDeviceGetComputeMode",
    "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetEncoderUtilization", "nvmlDeviceGetDecoderUtilization",
    "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetPowerManagementLimit", "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetTemperature", "nvmlDeviceGetTemperatureV", "nvmlDeviceGetTemperatureThreshold",
    "nvmlDeviceGetClockInfo", "nvmlDeviceGetMaxClockInfo", "nvmlDeviceGetPerformanceState",
    "nvmlDeviceGetNumFans", "nvmlDeviceGetFanSpeed", "nvmlDeviceGetFanSpeed_v2",
    "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons",
    "nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetRetiredPagesPendingStatus", "nvmlDeviceGetRemappedRows",
    "nvmlDeviceGetCurrPcieLinkGeneration", "nvmlDeviceGetCurrPcieLinkWidth", "nvmlDeviceGetPcieReplayCounter",
    "nvmlDeviceGetFieldValues", "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetGraphicsRunningProcesses_v3", "nvmlDeviceGetProcessUtilization",
    "nvmlDeviceGetMigMode", "nvmlDeviceGetMaxMigDeviceCount", "nvmlDeviceGetMigDeviceHandleByIndex",
    "nvmlDeviceIsMigDeviceHandle", "nvmlDeviceGetGpuInstanceId", "nvmlDeviceGetComputeInstanceId",
    "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
    "nvmlEventSetCreate", "nvmlDeviceGetSupportedEventTypes", "nvmlDeviceRegisterEvents", "nvmlEventSetWait_v2",
    "nvmlEventSetFree",
};

/* ---- small helpers ----------------------------------------------------------------------------------- */

static void warn_once(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void warn_once(const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    for (int i = 0; i < g_nreported; i++)
        if (strcmp(g_reported[i], msg) == 0)
            return;
    if (g_nreported < MAX_REPORTED)
        memcpy(g_reported[g_nreported++], msg, sizeof msg);
    fprintf(stderr, "nvml-double: %s\n", msg);
    fflush(stderr);
}

static void copy_bounded(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static nvmlReturn_t copy_out(char *buf, unsigned int length, const char *value)
{
    if (buf == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (value[0] == '\0')
        return NVML_ERROR_NOT_SUPPORTED;
    size_t n = strlen(value);
    if (n + 1 > length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(buf, value, n + 1);
    return NVML_SUCCESS;
}

static long long monotonic_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000LL;
}

static void sleep_us(long long us)
{
    if (us <= 0)
        return;
    struct timespec req = {.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000L}, rem;
    while (nanosleep(&req, &rem) != 0 && errno == EINTR)
        req = rem;
}

static void sleep_ms(long long ms)
{
    sleep_us(ms * 1000LL);
}

static bool timespec_eq(struct timespec a, struct timespec b)
{
    return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}

static bool known_function(const char *name)
{
    if (strcmp(name, "*") == 0)
        return true;
    size_t nlen = strlen(name);
    for (size_t i = 0; i < sizeof k_functions / sizeof k_functions[0]; i++) {
        const char *f = k_functions[i];
        if (strcmp(f, name) == 0)
            return true;
        /* the unversioned name of a versioned symbol, e.g. nvmlDeviceGetMemoryInfo for ..._v2 */
        if (strncmp(f, name, nlen) == 0 && f[nlen] == '_' && f[nlen + 1] == 'v')
            return true;
    }
    return false;
}

/* Whether a rule's function name selects symbol `fn`: "*", the exact symbol, or the symbol without its
 * "_v<N>" suffix (so "nvmlDeviceGetMemoryInfo" selects both nvmlDeviceGetMemoryInfo and ..._v2). */
static bool rule_matches(const char *rule_fn, const char *fn)
{
    if (strcmp(rule_fn, "*") == 0 || strcmp(rule_fn, fn) == 0)
        return true;
    size_t n = strlen(rule_fn);
    if (strncmp(rule_fn, fn, n) != 0 || fn[n] != '_' || fn[n + 1] != 'v' || fn[n + 2] == '\0')
        return false;
    for (const char *p = fn + n + 2; *p; p++)
        if (!isdigit((unsigned char)*p))
            return false;
    return true;
}

static bool find_rule(const struct rules *rs, const char *fn, unsigned int *value)
{
    for (int i = 0; i < rs->n; i++)
        if (rule_matches(rs->r[i].fn, fn)) {
            *value = rs->r[i].value;
            return true;
        }
    return false;
}

/* ---- scenario parsing -------------------------------------------------------------------------------- */

struct pctx {
    const char *path;
    int line;
    const char *text;
};

static void bad(const struct pctx *px, const char *what)
{
    warn_once("%s:%d: %s: %s", px->path, px->line, what, px->text);
}

static char *tok(char **s)
{
    char *p = *s;
    while (*p && isspace((unsigned char)*p))
        p++;
    if (*p == '\0') {
        *s = p;
        return NULL;
    }
    char *start = p;
    while (*p && !isspace((unsigned char)*p))
        p++;
    if (*p)
        *p++ = '\0';
    *s = p;
    return start;
}

static char *rest(char **s)
{
    char *p = *s;
    while (*p && isspace((unsigned char)*p))
        p++;
    char *end = p + strlen(p);
    while (end > p && isspace((unsigned char)end[-1]))
        *--end = '\0';
    *s = end;
    return *p ? p : NULL;
}

static bool parse_u64(const char *t, unsigned long long *v)
{
    if (t == NULL || *t == '\0' || *t == '-')
        return false;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(t, &end, 0);
    if (errno != 0 || *end != '\0')
        return false;
    *v = x;
    return true;
}

static bool parse_u32(const char *t, unsigned int *v)
{
    unsigned long long x;
    if (!parse_u64(t, &x) || x > 0xFFFFFFFFULL)
        return false;
    *v = (unsigned int)x;
    return true;
}

static bool parse_s64(const char *t, long long *v)
{
    if (t == NULL || *t == '\0')
        return false;
    char *end;
    errno = 0;
    long long x = strtoll(t, &end, 0);
    if (errno != 0 || *end != '\0')
        return false;
    *v = x;
    return true;
}

static bool parse_double(const char *t, double *v)
{
    if (t == NULL || *t == '\0')
        return false;
    char *end;
    errno = 0;
    double x = strtod(t, &end);
    if (errno != 0 || *end != '\0')
        return false;
    *v = x;
    return true;
}

static bool parse_name(const char *t, const char *const *names, int count, unsigned int *v)
{
    if (t == NULL)
        return false;
    for (int i = 0; i < count; i++)
        if (names[i] != NULL && strcmp(t, names[i]) == 0) {
            *v = (unsigned int)i;
            return true;
        }
    return parse_u32(t, v) && *v < (unsigned int)count;
}

static const char *const k_clock_names[] = {"graphics", "sm", "mem", "video"};
static const char *const k_threshold_names[MAX_THRESHOLDS] = {
    "shutdown", "slowdown", "mem_max", "gpu_max", "acoustic_min", "acoustic_curr", "acoustic_max", "gps_curr",
};
static const char *const k_ecc_error_names[] = {"corrected", "uncorrected"};
static const char *const k_ecc_counter_names[] = {"volatile", "aggregate"};

/* One-number keys, stored as opt_t at an offset in struct gpu or struct mig. */
struct scalar_key {
    const char *key;
    size_t offset;
};

static const struct scalar_key k_gpu_scalars[] = {
    {"pci_device_id", offsetof(struct gpu, pci_device_id)},
    {"pci_subsystem_id", offsetof(struct gpu, pci_subsystem_id)},
    {"minor", offsetof(struct gpu, minor)},
    {"persistence", offsetof(struct gpu, persistence)},
    {"compute_mode", offsetof(struct gpu, compute_mode)},
    {"util_gpu", offsetof(struct gpu, util_gpu)},
    {"util_mem", offsetof(struct gpu, util_mem)},
    {"mem_total", offsetof(struct gpu, mem.total)},
    {"mem_used", offsetof(struct gpu, mem.used)},
    {"mem_free", offsetof(struct gpu, mem.free)},
    {"mem_reserved", offsetof(struct gpu, mem.reserved)},
    {"power_mw", offsetof(struct gpu, power_mw)},
    {"power_limit_mw", offsetof(struct gpu, power_limit_mw)},
    {"enforced_power_limit_mw", offsetof(struct gpu, enforced_power_limit_mw)},
    {"energy_mj", offsetof(struct gpu, energy_mj)},
    {"temp_gpu", offsetof(struct gpu, temp_gpu)},
    {"pstate", offsetof(struct gpu, pstate)},
    {"num_fans", offsetof(struct gpu, num_fans)},
    {"clocks_event_reasons", offsetof(struct gpu, clocks_event_reasons)},
    {"retired_pending", offsetof(struct gpu, retired_pending)},
    {"pcie_gen", offsetof(struct gpu, pcie_gen)},
    {"pcie_width", offsetof(struct gpu, pcie_width)},
    {"pcie_replay", offsetof(struct gpu, pcie_replay)},
    {"mig_max", offsetof(struct gpu, mig_max)},
    {"supported_events", offsetof(struct gpu, supported_events)},
};

static const struct scalar_key k_mig_scalars[] = {
    {"gi", offsetof(struct mig, gi)},
    {"ci", offsetof(struct mig, ci)},
    {"mem_total", offsetof(struct mig, mem.total)},
    {"mem_used", offsetof(struct mig, mem.used)},
    {"mem_free", offsetof(struct mig, mem.free)},
    {"mem_reserved", offsetof(struct mig, mem.reserved)},
};

static int parse_scalar(void *base, const struct scalar_key *keys, size_t nkeys, const char *key, char **s,
                        const struct pctx *px)
{
    for (size_t i = 0; i < nkeys; i++) {
        if (strcmp(keys[i].key, key) != 0)
            continue;
        opt_t *o = (opt_t *)((char *)base + keys[i].offset);
        unsigned long long v;
        if (!parse_u64(tok(s), &v) || tok(s) != NULL) {
            bad(px, "expected one unsigned number");
            return -1;
        }
        o->set = true;
        o->v = v;
        return 1;
    }
    return 0;
}

static bool parse_word(char *dst, char **s, const struct pctx *px)
{
    char *t = tok(s);
    if (t == NULL || tok(s) != NULL) {
        bad(px, "expected one word");
        return false;
    }
    if (strlen(t) >= STR) {
        bad(px, "value too long");
        return false;
    }
    copy_bounded(dst, STR, t);
    return true;
}

static bool parse_text(char *dst, char **s, const struct pctx *px)
{
    char *t = rest(s);
    if (t == NULL) {
        bad(px, "expected text");
        return false;
    }
    if (strlen(t) >= STR) {
        bad(px, "value too long");
        return false;
    }
    copy_bounded(dst, STR, t);
    return true;
}

enum rule_kind { RULE_ERROR, RULE_DELAY, RULE_HANG };

static void parse_rule(struct rules *rs, char **s, const struct pctx *px, enum rule_kind kind)
{
    static const char *const usage[] = {
        [RULE_ERROR] = "expected: error <function|*> <nvml return code>",
        [RULE_DELAY] = "expected: delay <function|*> <ms>",
        [RULE_HANG] = "expected: hang <function|*>",
    };
    char *fn = tok(s);
    unsigned int v = 0;
    if (fn == NULL || (kind != RULE_HANG && !parse_u32(tok(s), &v)) || tok(s) != NULL) {
        bad(px, usage[kind]);
        return;
    }
    if (strlen(fn) >= sizeof rs->r[0].fn) {
        bad(px, "function name too long");
        return;
    }
    if (!known_function(fn))
        bad(px, "function not implemented by the double (rule kept)");
    if (rs->n >= MAX_RULES) {
        bad(px, "too many rules");
        return;
    }
    copy_bounded(rs->r[rs->n].fn, sizeof rs->r[0].fn, fn);
    rs->r[rs->n].value = v;
    rs->n++;
}

static void parse_proc(struct proc *procs, int *n, int max, char **s, const struct pctx *px)
{
    char *pid_t = tok(s), *used_t = tok(s), *gi_t = tok(s), *ci_t = tok(s);
    struct proc p = {.gi = NVML_NO_INSTANCE, .ci = NVML_NO_INSTANCE};
    bool ok = parse_u32(pid_t, &p.pid) && used_t != NULL;
    if (ok && strcmp(used_t, "na") == 0)
        p.used = ~0ULL; /* NVML_VALUE_NOT_AVAILABLE: pynvml reports usedGpuMemory None */
    else
        ok = ok && parse_u64(used_t, &p.used);
    if (ok && gi_t != NULL) {
        ok = parse_u32(gi_t, &p.gi) && parse_u32(ci_t, &p.ci);
        p.has_instance = true;
    }
    if (!ok || tok(s) != NULL) {
        bad(px, "expected: process <pid> <used bytes|na> [gpu instance id, compute instance id]");
        return;
    }
    if (*n >= max) {
        bad(px, "too many processes");
        return;
    }
    procs[(*n)++] = p;
}

static bool parse_field_value(const char *t, struct field *f)
{
    static const char *const types[] = {"d", "ui", "ul", "ull", "sll", "si", "us"};
    const char *colon = strchr(t, ':');
    const char *num = t;
    int type = -1;
    if (colon != NULL) {
        size_t n = (size_t)(colon - t);
        for (int i = 0; i < 7; i++)
            if (strlen(types[i]) == n && strncmp(t, types[i], n) == 0)
                type = i;
        if (type < 0)
            return false;
        num = colon + 1;
    } else if (strpbrk(t, ".eEnN") != NULL && strncmp(t, "0x", 2) != 0) {
        type = NVML_VALUE_TYPE_DOUBLE;
    } else if (t[0] == '-') {
        type = NVML_VALUE_TYPE_SIGNED_LONG_LONG;
    } else {
        type = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
    }
    unsigned long long u;
    long long sv;
    memset(&f->value, 0, sizeof f->value);
    f->type = (unsigned int)type;
    switch (type) {
    case NVML_VALUE_TYPE_DOUBLE:
        return parse_double(num, &f->value.dVal);
    case NVML_VALUE_TYPE_UNSIGNED_INT:
        if (!parse_u64(num, &u) || u > 0xFFFFFFFFULL)
            return false;
        f->value.uiVal = (unsigned int)u;
        return true;
    case NVML_VALUE_TYPE_UNSIGNED_LONG:
        if (!parse_u64(num, &u))
            return false;
        f->value.ulVal = (unsigned long)u;
        return true;
    case NVML_VALUE_TYPE_UNSIGNED_LONG_LONG:
        return parse_u64(num, &f->value.ullVal);
    case NVML_VALUE_TYPE_SIGNED_LONG_LONG:
        return parse_s64(num, &f->value.sllVal);
    case NVML_VALUE_TYPE_SIGNED_INT:
        if (!parse_s64(num, &sv) || sv < -2147483648LL || sv > 2147483647LL)
            return false;
        f->value.siVal = (int)sv;
        return true;
    default:
        if (!parse_u64(num, &u) || u > 0xFFFFULL)
            return false;
        f->value.usVal = (unsigned short)u;
        return true;
    }
}

static void parse_field(struct gpu *g, char **s, const struct pctx *px, bool is_error)
{
    char *a = tok(s), *b = tok(s), *c = tok(s);
    struct field f = {0};
    bool ok = a != NULL && b != NULL && tok(s) == NULL && parse_u32(a, &f.id);
    const char *value = b;
    if (ok && c != NULL) {
        ok = parse_u32(b, &f.scope);
        f.has_scope = true;
        value = c;
    }
    if (ok && is_error) {
        unsigned int r;
        ok = parse_u32(value, &r);
        f.is_error = true;
        f.ret = (nvmlReturn_t)r;
    } else if (ok) {
        ok = parse_field_value(value, &f);
    }
    if (!ok) {
        bad(px, is_error ? "expected: field_error <field id> [scope id] <nvml return code>"
                         : "expected: field <field id> [scope id] [d:|ui:|ul:|ull:|sll:|si:|us:]<value>");
        return;
    }
    if (g->nfield >= MAX_FIELDS) {
        bad(px, "too many fields");
        return;
    }
    g->field[g->nfield++] = f;
}

static bool parse_pci_bus_id(struct gpu *g, const char *t)
{
    unsigned int domain, bus, dev, fn;
    char tail;
    if (sscanf(t, "%x:%x:%x.%x%c", &domain, &bus, &dev, &fn, &tail) != 4 || bus > 0xFF || dev > 0x1F)
        return false;
    g->has_pci = true;
    g->pci_domain = domain;
    g->pci_bus = bus;
    g->pci_device = dev;
    return true;
}

static void parse_mig(struct gpu *g, char **s, const struct pctx *px)
{
    unsigned int slot;
    if (!parse_u32(tok(s), &slot) || slot >= MAX_MIG) {
        bad(px, "expected: mig <slot 0-7> <key> ...");
        return;
    }
    struct mig *m = &g->mig[slot];
    char *key = tok(s);
    if (key == NULL) {
        bad(px, "missing mig key");
        return;
    }
    m->present = true;
    int r = parse_scalar(m, k_mig_scalars, sizeof k_mig_scalars / sizeof k_mig_scalars[0], key, s, px);
    if (r != 0)
        return;
    if (strcmp(key, "uuid") == 0)
        parse_word(m->uuid, s, px);
    else if (strcmp(key, "name") == 0)
        parse_text(m->name, s, px);
    else if (strcmp(key, "process") == 0)
        parse_proc(m->proc, &m->nproc, MAX_MIG_PROCS, s, px);
    else if (strcmp(key, "graphics_process") == 0)
        parse_proc(m->gproc, &m->ngproc, MAX_MIG_PROCS, s, px);
    else if (strcmp(key, "error") == 0)
        parse_rule(&m->errors, s, px, RULE_ERROR);
    else
        bad(px, "unknown mig key");
}

static void parse_device(struct gpu *g, char *key, char **s, const struct pctx *px)
{
    int r = parse_scalar(g, k_gpu_scalars, sizeof k_gpu_scalars / sizeof k_gpu_scalars[0], key, s, px);
    if (r != 0)
        return;
    unsigned int a, b, c, d;
    unsigned long long v;
    if (strcmp(key, "uuid") == 0) {
        parse_word(g->uuid, s, px);
    } else if (strcmp(key, "name") == 0) {
        parse_text(g->name, s, px);
    } else if (strcmp(key, "serial") == 0) {
        parse_word(g->serial, s, px);
    } else if (strcmp(key, "pci_bus_id") == 0) {
        char *t = tok(s);
        if (t == NULL || tok(s) != NULL || !parse_pci_bus_id(g, t))
            bad(px, "expected: pci_bus_id <domain:bus:device.function in hex>");
    } else if (strcmp(key, "encoder") == 0 || strcmp(key, "decoder") == 0) {
        bool enc = key[0] == 'e';
        char *u = tok(s), *p = tok(s);
        unsigned long long util, period = DEFAULT_SAMPLING_PERIOD_US;
        if (!parse_u64(u, &util) || (p != NULL && !parse_u64(p, &period)) || tok(s) != NULL) {
            bad(px, "expected: encoder|decoder <util %> [sampling period us]");
            return;
        }
        opt_t *ou = enc ? &g->enc_util : &g->dec_util, *op = enc ? &g->enc_period : &g->dec_period;
        *ou = (opt_t){true, util};
        *op = (opt_t){true, period};
    } else if (strcmp(key, "temp_threshold") == 0) {
        if (!parse_name(tok(s), k_threshold_names, MAX_THRESHOLDS, &a) || !parse_u64(tok(s), &v) || tok(s) != NULL)
            bad(px, "expected: temp_threshold <type 0-15 or name> <celsius>");
        else
            g->temp_threshold[a] = (opt_t){true, v};
    } else if (strcmp(key, "clock") == 0 || strcmp(key, "max_clock") == 0) {
        if (!parse_name(tok(s), k_clock_names, 4, &a) || !parse_u64(tok(s), &v) || tok(s) != NULL)
            bad(px, "expected: clock|max_clock <graphics|sm|mem|video|0-3> <MHz>");
        else if (key[0] == 'c')
            g->clock[a] = (opt_t){true, v};
        else
            g->max_clock[a] = (opt_t){true, v};
    } else if (strcmp(key, "fan") == 0) {
        if (!parse_u32(tok(s), &a) || a >= MAX_FANS || !parse_u64(tok(s), &v) || tok(s) != NULL)
            bad(px, "expected: fan <index 0-7> <percent>");
        else
            g->fan[a] = (opt_t){true, v};
    } else if (strcmp(key, "ecc") == 0) {
        if (!parse_name(tok(s), k_ecc_error_names, 2, &a) || !parse_name(tok(s), k_ecc_counter_names, 2, &b) ||
            !parse_u64(tok(s), &v) || tok(s) != NULL)
            bad(px, "expected: ecc <corrected|uncorrected|0|1> <volatile|aggregate|0|1> <count>");
        else
            g->ecc[a][b] = (opt_t){true, v};
    } else if (strcmp(key, "remapped") == 0) {
        if (!parse_u32(tok(s), &a) || !parse_u32(tok(s), &b) || !parse_u32(tok(s), &c) || !parse_u32(tok(s), &d) ||
            tok(s) != NULL) {
            bad(px, "expected: remapped <correctable> <uncorrectable> <pending> <failure>");
        } else {
            g->has_remapped = true;
            g->remapped[0] = a;
            g->remapped[1] = b;
            g->remapped[2] = c;
            g->remapped[3] = d;
        }
    } else if (strcmp(key, "field") == 0) {
        parse_field(g, s, px, false);
    } else if (strcmp(key, "field_error") == 0) {
        parse_field(g, s, px, true);
    } else if (strcmp(key, "process") == 0) {
        parse_proc(g->proc, &g->nproc, MAX_PROCS, s, px);
    } else if (strcmp(key, "graphics_process") == 0) {
        parse_proc(g->gproc, &g->ngproc, MAX_PROCS, s, px);
    } else if (strcmp(key, "proc_util") == 0) {
        struct putil p;
        if (!parse_u32(tok(s), &p.pid) || !parse_u64(tok(s), &p.ts) || !parse_u32(tok(s), &p.sm) ||
            !parse_u32(tok(s), &p.mem) || !parse_u32(tok(s), &p.enc) || !parse_u32(tok(s), &p.dec) ||
            tok(s) != NULL)
            bad(px, "expected: proc_util <pid> <timestamp us> <sm> <mem> <enc> <dec>");
        else if (g->nputil >= MAX_PUTIL)
            bad(px, "too many proc_util samples");
        else
            g->putil[g->nputil++] = p;
    } else if (strcmp(key, "error") == 0) {
        parse_rule(&g->errors, s, px, RULE_ERROR);
    } else if (strcmp(key, "delay") == 0) {
        parse_rule(&g->delays, s, px, RULE_DELAY);
    } else if (strcmp(key, "hang") == 0) {
        parse_rule(&g->hangs, s, px, RULE_HANG);
    } else if (strcmp(key, "mig_mode") == 0) {
        if (!parse_u32(tok(s), &a) || !parse_u32(tok(s), &b) || tok(s) != NULL) {
            bad(px, "expected: mig_mode <current 0|1> <pending 0|1>");
        } else {
            g->has_mig_mode = true;
            g->mig_current = a;
            g->mig_pending = b;
        }
    } else if (strcmp(key, "mig") == 0) {
        parse_mig(g, s, px);
    } else if (strcmp(key, "xid") == 0) {
        struct xid x = {.gi = NVML_NO_INSTANCE, .ci = NVML_NO_INSTANCE};
        char *gi_t;
        bool ok = parse_u64(tok(s), &x.seq) && parse_u64(tok(s), &x.xid);
        if (ok && (gi_t = tok(s)) != NULL)
            ok = parse_u32(gi_t, &x.gi) && parse_u32(tok(s), &x.ci);
        if (!ok || tok(s) != NULL)
            bad(px, "expected: xid <seq> <xid> [gpu instance id, compute instance id]");
        else if (g->nxid >= MAX_XIDS)
            bad(px, "too many xid events");
        else
            g->xid[g->nxid++] = x;
    } else {
        bad(px, "unknown device key");
    }
}

static void parse_line(struct scenario *sc, char *line, const struct pctx *px)
{
    char *s = line;
    char *key = tok(&s);
    if (key == NULL || key[0] == '#')
        return;
    if (strcmp(key, "driver") == 0) {
        parse_word(sc->driver, &s, px);
    } else if (strcmp(key, "nvml_version") == 0) {
        parse_word(sc->nvml_version, &s, px);
    } else if (strcmp(key, "cuda") == 0 || strcmp(key, "init_error") == 0) {
        unsigned long long v;
        if (!parse_u64(tok(&s), &v) || tok(&s) != NULL)
            bad(px, "expected one unsigned number");
        else if (key[0] == 'c')
            sc->cuda = (opt_t){true, v};
        else
            sc->init_error = (opt_t){true, v};
    } else if (strcmp(key, "error") == 0) {
        parse_rule(&sc->errors, &s, px, RULE_ERROR);
    } else if (strcmp(key, "delay") == 0) {
        parse_rule(&sc->delays, &s, px, RULE_DELAY);
    } else if (strcmp(key, "hang") == 0) {
        parse_rule(&sc->hangs, &s, px, RULE_HANG);
    } else if (strcmp(key, "device") == 0) {
        unsigned int i;
        if (!parse_u32(tok(&s), &i) || i >= MAX_GPUS) {
            bad(px, "expected: device <index 0-15> <key> ...");
            return;
        }
        char *dkey = tok(&s);
        if (dkey == NULL) {
            bad(px, "missing device key");
            return;
        }
        sc->gpu[i].present = true;
        if ((int)i + 1 > sc->ngpus)
            sc->ngpus = (int)i + 1;
        parse_device(&sc->gpu[i], dkey, &s, px);
    } else {
        bad(px, "unknown key");
    }
}

static void parse_file(struct scenario *sc, FILE *f, const char *path)
{
    char line[4096], text[4096];
    struct pctx px = {.path = path, .line = 0, .text = text};
    while (fgets(line, sizeof line, f) != NULL) {
        px.line++;
        size_t n = strlen(line);
        if (n > 0 && line[n - 1] == '\n')
            line[--n] = '\0';
        else if (!feof(f)) {
            bad(&px, "line too long");
            int ch;
            while ((ch = fgetc(f)) != EOF && ch != '\n')
                ;
            continue;
        }
        copy_bounded(text, sizeof text, line);
        parse_line(sc, line, &px);
    }
    for (int i = 0; i < sc->ngpus; i++)
        if (!sc->gpu[i].present)
            warn_once("%s: device %d has no lines (every call on it returns NOT_SUPPORTED)", path, i);
}

static void drop_scenario_locked(void)
{
    free(g_sc);
    g_sc = NULL;
    g_stamp.valid = false;
}

/* Re-reads the scenario when its path, identity, size or times changed. An unset variable or a missing file
 * means "no driver": nvmlInit fails with DRIVER_NOT_LOADED and calls made while initialised return it too.
 * Writers should replace the file by rename (Scenario.write does), so readers never see it half written.
 * Called with g_lock held. */
static void reload_locked(void)
{
    const char *path = getenv(SCENARIO_ENV);
    if (path == NULL || path[0] == '\0') {
        warn_once("%s is not set: behaving as if no NVIDIA driver were loaded", SCENARIO_ENV);
        drop_scenario_locked();
        return;
    }
    struct stat st;
    if (stat(path, &st) != 0) {
        warn_once("cannot stat scenario %s: %s", path, strerror(errno));
        drop_scenario_locked();
        return;
    }
    if (g_stamp.valid && strcmp(g_stamp.path, path) == 0 && g_stamp.dev == st.st_dev && g_stamp.ino == st.st_ino &&
        g_stamp.size == st.st_size && timespec_eq(g_stamp.mtim, st.st_mtim) && timespec_eq(g_stamp.ctim, st.st_ctim))
        return;
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        warn_once("cannot open scenario %s: %s", path, strerror(errno));
        drop_scenario_locked();
        return;
    }
    struct stat fst;
    if (fstat(fileno(f), &fst) != 0) {
        fclose(f);
        return;
    }
    struct scenario *sc = calloc(1, sizeof *sc);
    if (sc == NULL) {
        fclose(f);
        warn_once("out of memory reading %s", path);
        return;
    }
    parse_file(sc, f, path);
    fclose(f);
    free(g_sc);
    g_sc = sc;
    g_stamp.valid = true;
    copy_bounded(g_stamp.path, sizeof g_stamp.path, path);
    g_stamp.dev = fst.st_dev;
    g_stamp.ino = fst.st_ino;
    g_stamp.size = fst.st_size;
    g_stamp.mtim = fst.st_mtim;
    g_stamp.ctim = fst.st_ctim;
}

/* ---- call prologue ----------------------------------------------------------------------------------- */

struct call {
    int gi;     /* GPU index, -1 for calls without a device */
    int slot;   /* MIG slot, -1 for a GPU handle */
    struct gpu *g;
    struct mig *m;
};

static nvmlReturn_t leave(nvmlReturn_t r)
{
    pthread_mutex_unlock(&g_lock);
    return r;
}

static bool decode_handle(nvmlDevice_t h, int *gi, int *slot)
{
    uintptr_t base = (uintptr_t)&g_handles[0][0], p = (uintptr_t)h;
    size_t total = (size_t)MAX_GPUS * (MAX_MIG + 1);
    if (h == NULL || p < base || p >= base + total * sizeof(struct nvmlDevice_st))
        return false;
    size_t idx = (p - base) / sizeof(struct nvmlDevice_st);
    *gi = (int)(idx / (MAX_MIG + 1));
    *slot = (int)(idx % (MAX_MIG + 1)) - 1;
    return true;
}

static nvmlDevice_t handle_of(int gi, int slot)
{
    return &g_handles[gi][slot + 1];
}

/* Whether (gi, slot) names a device of the current scenario. Called with g_lock held. */
static bool device_valid(int gi, int slot)
{
    if (g_sc == NULL || gi < 0 || gi >= g_sc->ngpus)
        return false;
    if (slot < 0)
        return true;
    const struct gpu *g = &g_sc->gpu[gi];
    return g->has_mig_mode && g->mig_current == 1 && g->mig[slot].present;
}

static unsigned int delay_for(const char *fn, int gi)
{
    unsigned int ms = 0;
    if (g_sc == NULL)
        return 0;
    if (gi >= 0 && gi < g_sc->ngpus && find_rule(&g_sc->gpu[gi].delays, fn, &ms))
        return ms;
    if (find_rule(&g_sc->delays, fn, &ms))
        return ms;
    return 0;
}

/* Whether the current scenario holds a hang rule for fn (on GPU gi, or global). Called with g_lock held. */
static bool hang_for(const char *fn, int gi)
{
    unsigned int unused;
    if (g_sc == NULL)
        return false;
    if (gi >= 0 && gi < g_sc->ngpus && find_rule(&g_sc->gpu[gi].hangs, fn, &unused))
        return true;
    return find_rule(&g_sc->hangs, fn, &unused);
}

/* Blocks (lock released, GIL released by ctypes) while the scenario holds a hang rule for fn: a wedged driver
 * call. Re-reads the scenario every WAIT_POLL_MS; returns once the rule is gone, the scenario vanished or NVML
 * was shut down (the caller's own checks then answer as usual). */
static void wait_out_hang(const char *fn, int gi, bool initialised)
{
    for (;;) {
        pthread_mutex_lock(&g_lock);
        reload_locked();
        bool hanging = (!initialised || g_refcount > 0) && hang_for(fn, gi);
        pthread_mutex_unlock(&g_lock);
        if (!hanging)
            return;
        sleep_ms(WAIT_POLL_MS);
    }
}

static bool error_for(const char *fn, int gi, int slot, unsigned int *code)
{
    if (gi >= 0) {
        struct gpu *g = &g_sc->gpu[gi];
        if (slot >= 0 && find_rule(&g->mig[slot].errors, fn, code))
            return true;
        if (find_rule(&g->errors, fn, code))
            return true;
    }
    return find_rule(&g_sc->errors, fn, code);
}

/* Prologue of every call except init/shutdown/errorString: waits out an injected delay (lock released),
 * then takes the lock, re-reads the scenario, checks init, the device and injected errors. On NVML_SUCCESS
 * the lock is held and the caller must finish with leave(). */
static nvmlReturn_t enter_at(const char *fn, int gi, int slot, bool allow_mig, struct call *c)
{
    pthread_mutex_lock(&g_lock);
    reload_locked();
    if (g_refcount == 0)
        return leave(NVML_ERROR_UNINITIALIZED);
    unsigned int ms = delay_for(fn, gi);
    pthread_mutex_unlock(&g_lock);
    sleep_ms(ms);
    wait_out_hang(fn, gi, true);

    pthread_mutex_lock(&g_lock);
    reload_locked();
    if (g_refcount == 0)
        return leave(NVML_ERROR_UNINITIALIZED);
    if (g_sc == NULL)
        return leave(NVML_ERROR_DRIVER_NOT_LOADED);
    if (gi >= 0 && !device_valid(gi, slot))
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    unsigned int code;
    if (error_for(fn, gi, slot, &code))
        return leave((nvmlReturn_t)code);
    if (slot >= 0 && !allow_mig)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    c->gi = gi;
    c->slot = slot;
    c->g = gi >= 0 ? &g_sc->gpu[gi] : NULL;
    c->m = slot >= 0 ? &g_sc->gpu[gi].mig[slot] : NULL;
    return NVML_SUCCESS;
}

static nvmlReturn_t enter_dev(const char *fn, nvmlDevice_t h, bool allow_mig, struct call *c)
{
    int gi, slot;
    if (!decode_handle(h, &gi, &slot)) {
        pthread_mutex_lock(&g_lock);
        return leave(g_refcount == 0 ? NVML_ERROR_UNINITIALIZED : NVML_ERROR_INVALID_ARGUMENT);
    }
    return enter_at(fn, gi, slot, allow_mig, c);
}

static nvmlReturn_t enter_sys(const char *fn, struct call *c)
{
    return enter_at(fn, -1, -1, false, c);
}

/* ---- init, shutdown, errors --------------------------------------------------------------------------- */

static nvmlReturn_t do_init(const char *fn)
{
    pthread_mutex_lock(&g_lock);
    reload_locked();
    unsigned int ms = delay_for(fn, -1);
    pthread_mutex_unlock(&g_lock);
    sleep_ms(ms);
    wait_out_hang(fn, -1, false);

    pthread_mutex_lock(&g_lock);
    reload_locked();
    if (g_sc == NULL)
        return leave(NVML_ERROR_DRIVER_NOT_LOADED);
    if (g_sc->init_error.set && g_sc->init_error.v != 0)
        return leave((nvmlReturn_t)g_sc->init_error.v);
    unsigned int code;
    if (find_rule(&g_sc->errors, fn, &code))
        return leave((nvmlReturn_t)code);
    g_refcount++;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags; /* NVML_INIT_FLAG_NO_GPUS / NO_ATTACH change nothing here */
    return do_init("nvmlInitWithFlags");
}

EXPORT nvmlReturn_t nvmlInit_v2(void)
{
    return do_init("nvmlInit_v2");
}

EXPORT nvmlReturn_t nvmlShutdown(void)
{
    pthread_mutex_lock(&g_lock);
    reload_locked();
    if (g_refcount == 0)
        return leave(NVML_ERROR_UNINITIALIZED);
    unsigned int code;
    if (g_sc != NULL && find_rule(&g_sc->errors, "nvmlShutdown", &code))
        return leave((nvmlReturn_t)code);
    g_refcount--;
    return leave(NVML_SUCCESS);
}

EXPORT const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 5: return "Already Initialized";
    case 6: return "Not Found";
    case 7: return "Insufficient Size";
    case 8: return "Insufficient External Power";
    case 9: return "Driver Not Loaded";
    case 10: return "Timeout";
    case 11: return "Interrupt Request Issue";
    case 12: return "NVML Shared Library Not Found";
    case 13: return "Function Not Found";
    case 14: return "Corrupted infoROM";
    case 15: return "GPU is lost";
    case 16: return "GPU requires restart";
    case 17: return "The operating system has blocked the request.";
    case 18: return "RM has detected an NVML/RM version mismatch.";
    case 19: return "In use by another client";
    case 20: return "Insufficient Memory";
    case 21: return "No data";
    case 22: return "The requested vgpu operation is not available on target device, because ECC is enabled";
    case 23: return "Insufficient resources";
    case 24: return "Frequency not supported";
    case 25: return "Argument version mismatch";
    case 26: return "Deprecated";
    case 27: return "Not Ready";
    case 28: return "GPU not found";
    case 29: return "Invalid state";
    case 30: return "Reset type not supported";
    default: return "Unknown Error";
    }
}

/* ---- system queries ---------------------------------------------------------------------------------- */

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    struct call c;
    nvmlReturn_t r = enter_sys("nvmlSystemGetDriverVersion", &c);
    if (r != NVML_SUCCESS)
        return r;
    return leave(copy_out(version, length, g_sc->driver));
}

EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    struct call c;
    nvmlReturn_t r = enter_sys("nvmlSystemGetNVMLVersion", &c);
    if (r != NVML_SUCCESS)
        return r;
    char derived[2 * STR];
    if (g_sc->nvml_version[0] != '\0')
        return leave(copy_out(version, length, g_sc->nvml_version));
    if (g_sc->driver[0] == '\0' || !g_sc->cuda.set)
        return leave(copy_out(version, length, ""));
    snprintf(derived, sizeof derived, "%llu.%s", g_sc->cuda.v / 1000ULL, g_sc->driver);
    return leave(copy_out(version, length, derived));
}

static nvmlReturn_t cuda_version(const char *fn, int *out)
{
    struct call c;
    nvmlReturn_t r = enter_sys(fn, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (out == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!g_sc->cuda.set)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    *out = (int)g_sc->cuda.v;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *cudaDriverVersion)
{
    return cuda_version("nvmlSystemGetCudaDriverVersion", cudaDriverVersion);
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion)
{
    return cuda_version("nvmlSystemGetCudaDriverVersion_v2", cudaDriverVersion);
}

/* ---- device discovery -------------------------------------------------------------------------------- */

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount)
{
    struct call c;
    nvmlReturn_t r = enter_sys("nvmlDeviceGetCount_v2", &c);
    if (r != NVML_SUCCESS)
        return r;
    if (deviceCount == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *deviceCount = (unsigned int)g_sc->ngpus;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    struct call c;
    if (index >= MAX_GPUS) {
        pthread_mutex_lock(&g_lock);
        return leave(g_refcount == 0 ? NVML_ERROR_UNINITIALIZED : NVML_ERROR_INVALID_ARGUMENT);
    }
    nvmlReturn_t r = enter_at("nvmlDeviceGetHandleByIndex_v2", (int)index, -1, false, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (device == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *device = handle_of((int)index, -1);
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    int gi = -1, slot = -1;
    pthread_mutex_lock(&g_lock);
    reload_locked();
    if (g_refcount == 0)
        return leave(NVML_ERROR_UNINITIALIZED);
    if (g_sc == NULL)
        return leave(NVML_ERROR_DRIVER_NOT_LOADED);
    if (uuid == NULL || device == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    for (int i = 0; i < g_sc->ngpus && gi < 0; i++) {
        const struct gpu *g = &g_sc->gpu[i];
        if (g->uuid[0] != '\0' && strcmp(g->uuid, uuid) == 0) {
            gi = i;
            break;
        }
        for (int s = 0; s < MAX_MIG; s++)
            if (device_valid(i, s) && g->mig[s].uuid[0] != '\0' && strcmp(g->mig[s].uuid, uuid) == 0) {
                gi = i;
                slot = s;
                break;
            }
    }
    pthread_mutex_unlock(&g_lock);
    if (gi < 0) {
        pthread_mutex_lock(&g_lock);
        return leave(NVML_ERROR_NOT_FOUND);
    }
    struct call c;
    nvmlReturn_t r = enter_at("nvmlDeviceGetHandleByUUID", gi, slot, true, &c);
    if (r != NVML_SUCCESS)
        return r;
    *device = handle_of(gi, slot);
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    struct call c;
    nvmlReturn_t r = enter_dev("nvmlDeviceGetIndex", device, false, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (index == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *index = (unsigned int)c.gi;
    return leave(NVML_SUCCESS);
}

/* ---- identity ---------------------------------------------------------------------------------------- */

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    struct call c;
    nvmlReturn_t r = enter_dev("nvmlDeviceGetUUID", device, true, &c);
    if (r != NVML_SUCCESS)
        return r;
    return leave(copy_out(uuid, length, c.m != NULL ? c.m->uuid : c.g->uuid));
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    struct call c;
    nvmlReturn_t r = enter_dev("nvmlDeviceGetName", device, true, &c);
    if (r != NVML_SUCCESS)
        return r;
    return leave(copy_out(name, length, c.m != NULL ? c.m->name : c.g->name));
}

EXPORT nvmlReturn_t nvmlDeviceGetSerial(nvmlDevice_t device, char *serial, unsigned int length)
{
    struct call c;
    nvmlReturn_t r = enter_dev("nvmlDeviceGetSerial", device, false, &c);
    if (r != NVML_SUCCESS)
        return r;
    return leave(copy_out(serial, length, c.g->serial));
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    struct call c;
    nvmlReturn_t r = enter_dev("nvmlDeviceGetPciInfo_v3", device, false, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (pci == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!c.g->has_pci)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    memset(pci, 0, sizeof *pci);
    pci->domain = c.g->pci_domain;
    pci->bus = c.g->pci_bus;
    pci->device = c.g->pci_device;
    pci->pciDeviceId = (unsigned int)c.g->pci_device_id.v;
    pci->pciSubSystemId = (unsigned int)c.g->pci_subsystem_id.v;
    snprintf(pci->busId, sizeof pci->busId, "%08X:%02X:%02X.0", pci->domain, pci->bus & 0xFFu, pci->device & 0x1Fu);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04X:%02X:%02X.0", pci->domain & 0xFFFFu,
             pci->bus & 0xFFu, pci->device & 0x1Fu);
    return leave(NVML_SUCCESS);
}

/* A device getter returning one unsigned int from an opt_t of struct gpu. */
#define UINT_GETTER(sym, member)                                                                                   \
    EXPORT nvmlReturn_t sym(nvmlDevice_t device, unsigned int *out)                                                \
    {                                                                                                              \
        struct call c;                                                                                             \
        nvmlReturn_t r = enter_dev(#sym, device, false, &c);                                                       \
        if (r != NVML_SUCCESS)                                                                                     \
            return r;                                                                                              \
        if (out == NULL)                                                                                           \
            return leave(NVML_ERROR_INVALID_ARGUMENT);                                                             \
        if (!c.g->member.set)                                                                                      \
            return leave(NVML_ERROR_NOT_SUPPORTED);                                                                \
        *out = (unsigned int)c.g->member.v;                                                                        \
        return leave(NVML_SUCCESS);                                                                                \
    }

#define ULL_GETTER(sym, member)                                                                                    \
    EXPORT nvmlReturn_t sym(nvmlDevice_t device, unsigned long long *out)                                          \
    {                                                                                                              \
        struct call c;                                                                                             \
        nvmlReturn_t r = enter_dev(#sym, device, false, &c);                                                       \
        if (r != NVML_SUCCESS)                                                                                     \
            return r;                                                                                              \
        if (out == NULL)                                                                                           \
            return leave(NVML_ERROR_INVALID_ARGUMENT);                                                             \
        if (!c.g->member.set)                                                                                      \
            return leave(NVML_ERROR_NOT_SUPPORTED);                                                                \
        *out = c.g->member.v;                                                                                      \
        return leave(NVML_SUCCESS);                                                                                \
    }

UINT_GETTER(nvmlDeviceGetMinorNumber, minor)
UINT_GETTER(nvmlDeviceGetPersistenceMode, persistence)
UINT_GETTER(nvmlDeviceGetComputeMode, compute_mode)
UINT_GETTER(nvmlDeviceGetPowerUsage, power_mw)
UINT_GETTER(nvmlDeviceGetPowerManagementLimit, power_limit_mw)
UINT_GETTER(nvmlDeviceGetPerformanceState, pstate)
UINT_GETTER(nvmlDeviceGetRetiredPagesPendingStatus, retired_pending)
UINT_GETTER(nvmlDeviceGetCurrPcieLinkGeneration, pcie_gen)
UINT_GETTER(nvmlDeviceGetCurrPcieLinkWidth, pcie_width)
UINT_GETTER(nvmlDeviceGetPcieReplayCounter, pcie_replay)
ULL_GETTER(nvmlDeviceGetTotalEnergyConsumption, energy_mj)
ULL_GETTER(nvmlDeviceGetCurrentClocksEventReasons, clocks_event_reasons)
ULL_GETTER(nvmlDeviceGetCurrentClocksThrottleReasons, clocks_event_reasons)
ULL_GETTER(nvmlDeviceGetSupportedEventTypes, supported_events)

EXPORT nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *limit)
{
    struct call c;
    nvmlReturn_t r = enter_dev("nvmlDeviceGetEnforcedPowerLimit", device, false, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (limit == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    const opt_t *o = c.g->enforced_power_limit_mw.set ? &c.g->enforced_power_limit_mw : &c.g->power_limit_mw;
    if (!o->set)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    *limit = (unsigned int)o->v;
    return leave(NVML_SUCCESS);
}

/* ---- utilisation ------------------------------------------------------------------------------------- */

static bool mig_enabled(const struct gpu *g)
{
    return g->has_mig_mode && g->mig_current == 1;
}

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization)
{
    struct call c;
    nvmlReturn_t r = enter_dev("nvmlDeviceGetUtilizationRates", device, false, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (utilization == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (mig_enabled(c.g) || (!c.g->util_gpu.set && !c.g->util_mem.set))
        return leave(NVML_ERROR_NOT_SUPPORTED);
    utilization->gpu = (unsigned int)c.g->util_gpu.v;
    utilization->memory = (unsigned int)c.g->util_mem.v;
    return leave(NVML_SUCCESS);
}

static nvmlReturn_t codec_utilization(const char *fn, nvmlDevice_t device, bool encoder, unsigned int *util,
                                      unsigned int *period)
{
    struct call c;
    nvmlReturn_t r = enter_dev(fn, device, false, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (util == NULL || period == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    const opt_t *u = encoder ? &c.g->enc_util : &c.g->dec_util, *p = encoder ? &c.g->enc_period : &c.g->dec_period;
    if (!u->set)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    *util = (unsigned int)u->v;
    *period = (unsigned int)p->v;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetEncoderUtilization(nvmlDevice_t device, unsigned int *utilization,
                                                    unsigned int *samplingPeriodUs)
{
    return codec_utilization("nvmlDeviceGetEncoderUtilization", device, true, utilization, samplingPeriodUs);
}

EXPORT nvmlReturn_t nvmlDeviceGetDecoderUtilization(nvmlDevice_t device, unsigned int *utilization,
                                                    unsigned int *samplingPeriodUs)
{
    return codec_utilization("nvmlDeviceGetDecoderUtilization", device, false, utilization, samplingPeriodUs);
}

/* ---- memory ------------------------------------------------------------------------------------------ */

struct memvals {
    unsigned long long total, reserved, used, free;
};

static bool memory_of(const struct mem *m, struct memvals *out)
{
    if (!m->total.set)
        return false;
    out->total = m->total.v;
    out->reserved = m->reserved.set ? m->reserved.v : 0;
    out->used = m->used.set ? m->used.v : 0;
    if (m->free.set)
        out->free = m->free.v;
    else
        out->free = out->total > out->reserved + out->used ? out->total - out->reserved - out->used : 0;
    return true;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    struct call c;
    struct memvals v;
    nvmlReturn_t r = enter_dev("nvmlDeviceGetMemoryInfo", device, true, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (memory == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!memory_of(c.m != NULL ? &c.m->mem : &c.g->mem, &v))
        return leave(NVML_ERROR_NOT_SUPPORTED);
    memory->total = v.total;
    memory->free = v.free;
    memory->used = v.used + v.reserved; /* v1 has no "reserved" and counts it as used */
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    struct call c;
    struct memvals v;
    nvmlReturn_t r = enter_dev("nvmlDeviceGetMemoryInfo_v2", device, true, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (memory == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (memory->version != NVML_MEMORY_V2)
        return leave(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    if (!memory_of(c.m != NULL ? &c.m->mem : &c.g->mem, &v))
        return leave(NVML_ERROR_NOT_SUPPORTED);
    memory->total = v.total;
    memory->reserved = v.reserved;
    memory->free = v.free;
    memory->used = v.used;
    return leave(NVML_SUCCESS);
}

/* ---- thermal, clocks, fans --------------------------------------------------------------------------- */

EXPORT nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, unsigned int sensorType, unsigned int *temp)
{
    struct call c;
    nvmlReturn_t r = enter_dev("nvmlDeviceGetTemperature", device, false, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (temp == NULL || sensorType != 0) /* NVML_TEMPERATURE_GPU is the only sensor */
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!c.g->temp_gpu.set)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    *temp = (unsigned int)c.g->temp_gpu.v;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperatureV(nvmlDevice_t device, nvmlTemperature_t *temperature)
{
    struct call c;
    nvmlReturn_t r = enter_dev("nvmlDeviceGetTemperatureV", device, false, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (temperature == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (temperature->version != NVML_TEMPERATURE_V1)
        return leave(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    if (temperature->sensorType != 0)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!c.g->temp_gpu.set)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    temperature->temperature = (int)c.g->temp_gpu.v;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperatureThreshold(nvmlDevice_t device, unsigned int thresholdType,
                                                      unsigned int *temp)
{
    struct call c;
    nvmlReturn_t r = enter_dev("nvmlDeviceGetTemperatureThreshold", device, false, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (temp == NULL || thresholdType >= MAX_THRESHOLDS)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!c.g->temp_threshold[thresholdType].set)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    *temp = (unsigned int)c.g->temp_threshold[thresholdType].v;
    return leave(NVML_SUCCESS);
}

static nvmlReturn_t clock_of(const char *fn, nvmlDevice_t device, unsigned int type, unsigned int *clock, bool max)
{
    struct call c;
    nvmlReturn_t r = enter_dev(fn, device, false, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (clock == NULL || type >= 4)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    const opt_t *o = max ? &c.g->max_clock[type] : &c.g->clock[type];
    if (!o->set)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    *clock = (unsigned int)o->v;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, unsigned int type, unsigned int *clock)
{
    return clock_of("nvmlDeviceGetClockInfo", device, type, clock, false);
}

EXPORT nvmlReturn_t nvmlDeviceGetMaxClockInfo(nvmlDevice_t device, unsigned int type, unsigned int *clock)
{
    return clock_of("nvmlDeviceGetMaxClockInfo", device, type, clock, true);
}

static unsigned int fan_count(const struct gpu *g)
{
    if (g->num_fans.set)
        return (unsigned int)g->num_fans.v;
    unsigned int n = 0;
    for (unsigned int i = 0; i < MAX_FANS; i++)
        if (g->fan[i].set)
            n = i + 1;
    return n;
}

EXPORT nvmlReturn_t nvmlDeviceGetNumFans(nvmlDevice_t device, unsigned int *numFans)
{
    struct call c;
    nvmlReturn_t r = enter_dev("nvmlDeviceGetNumFans", device, false, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (numFans == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *numFans = fan_count(c.g);
    return leave(NVML_SUCCESS);
}

static nvmlReturn_t fan_speed(const char *fn, nvmlDevice_t device, unsigned int fan, unsigned int *speed)
{
    struct call c;
    nvmlReturn_t r = enter_dev(fn, device, false, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (speed == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    unsigned int n = fan_count(c.g);
    if (n == 0)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    if (fan >= n || fan >= MAX_FANS)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!c.g->fan[fan].set)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    *speed = (unsigned int)c.g->fan[fan].v;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetFanSpeed(nvmlDevice_t device, unsigned int *speed)
{
    return fan_speed("nvmlDeviceGetFanSpeed", device, 0, speed);
}

EXPORT nvmlReturn_t nvmlDeviceGetFanSpeed_v2(nvmlDevice_t device, unsigned int fan, unsigned int *speed)
{
    return fan_speed("nvmlDeviceGetFanSpeed_v2", device, fan, speed);
}

/* ---- reliability, PCIe ------------------------------------------------------------------------------- */

EXPORT nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, unsigned int errorType,
                                                unsigned int counterType, unsigned long long *eccCounts)
{
    struct call c;
    nvmlReturn_t r = enter_dev("nvmlDeviceGetTotalEccErrors", device, false, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (eccCounts == NULL || errorType >= 2 || counterType >= 2)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!c.g->ecc[errorType][counterType].set)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    *eccCounts = c.g->ecc[errorType][counterType].v;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t device, unsigned int *corrRows, unsigned int *uncRows,
                                              unsigned int *isPending, unsigned int *failureOccurred)
{
    struct call c;
    nvmlReturn_t r = enter_dev("nvmlDeviceGetRemappedRows", device, false, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (corrRows == NULL || uncRows == NULL || isPending == NULL || failureOccurred == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!c.g->has_remapped)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    *corrRows = c.g->remapped[0];
    *uncRows = c.g->remapped[1];
    *isPending = c.g->remapped[2];
    *failureOccurred = c.g->remapped[3];
    return leave(NVML_SUCCESS);
}

/* ---- field values ------------------------------------------------------------------------------------ */

static const struct field *find_field(const struct gpu *g, unsigned int id, unsigned int scope)
{
    for (int i = 0; i < g->nfield; i++)
        if (g->field[i].id == id && g->field[i].has_scope && g->field[i].scope == scope)
            return &g->field[i];
    for (int i = 0; i < g->nfield; i++)
        if (g->field[i].id == id && !g->field[i].has_scope)
            return &g->field[i];
    return NULL;
}

EXPORT nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t device, int valuesCount, nvmlFieldValue_t *values)
{
    struct call c;
    nvmlReturn_t r = enter_dev("nvmlDeviceGetFieldValues", device, false, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (values == NULL || valuesCount <= 0)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    long long now_us = (long long)tv.tv_sec * 1000000LL + tv.tv_usec;
    for (int i = 0; i < valuesCount; i++) {
        nvmlFieldValue_t *v = &values[i];
        const struct field *f = find_field(c.g, v->fieldId, v->scopeId);
        v->timestamp = now_us;
        v->latencyUsec = 0;
        memset(&v->value, 0, sizeof v->value);
        if (f == NULL) {
            v->valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
            v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        } else if (f->is_error) {
            v->valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
            v->nvmlReturn = f->ret;
        } else {
            v->valueType = f->type;
            v->value = f->value;
            v->nvmlReturn = NVML_SUCCESS;
        }
    }
    return leave(NVML_SUCCESS);
}

/* ---- processes --------------------------------------------------------------------------------------- */

static void add_proc(nvmlProcessInfo_t *out, unsigned int cap, unsigned int *n, const struct proc *p,
                     const struct mig *m)
{
    if (out != NULL && *n < cap) {
        nvmlProcessInfo_t *o = &out[*n];
        o->pid = p->pid;
        o->usedGpuMemory = p->used;
        if (p->has_instance || m == NULL) {
            o->gpuInstanceId = p->gi;
            o->computeInstanceId = p->ci;
        } else {
            o->gpuInstanceId = m->gi.set ? (unsigned int)m->gi.v : NVML_NO_INSTANCE;
            o->computeInstanceId = m->ci.set ? (unsigned int)m->ci.v : NVML_NO_INSTANCE;
        }
    }
    (*n)++;
}

/* Fills `out` (capacity `cap`, may be NULL) and returns the number of processes. A GPU with MIG enabled also
 * lists the processes of all its MIG devices, tagged with their instance ids. */
static unsigned int collect_procs(const struct call *c, bool graphics, nvmlProcessInfo_t *out, unsigned int cap)
{
    unsigned int n = 0;
    if (c->m != NULL) {
        const struct proc *ps = graphics ? c->m->gproc : c->m->proc;
        int np = graphics ? c->m->ngproc : c->m->nproc;
        for (int i = 0; i < np; i++)
            add_proc(out, cap, &n, &ps[i], c->m);
        return n;
    }
    const struct proc *ps = graphics ? c->g->gproc : c->g->proc;
    int np = graphics ? c->g->ngproc : c->g->nproc;
    for (int i = 0; i < np; i++)
        add_proc(out, cap, &n, &ps[i], NULL);
    if (mig_enabled(c->g))
        for (int s = 0; s < MAX_MIG; s++) {
            const struct mig *m = &c->g->mig[s];
            if (!m->present)
                continue;
            const struct proc *mps = graphics ? m->gproc : m->proc;
            int mnp = graphics ? m->ngproc : m->nproc;
            for (int i = 0; i < mnp; i++)
                add_proc(out, cap, &n, &mps[i], m);
        }
    return n;
}

static nvmlReturn_t running_processes(const char *fn, bool graphics, nvmlDevice_t device, unsigned int *infoCount,
                                      nvmlProcessInfo_t *infos)
{
    struct call c;
    nvmlReturn_t r = enter_dev(fn, device, true, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (infoCount == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    unsigned int n = collect_procs(&c, graphics, NULL, 0);
    unsigned int cap = infos == NULL ? 0 : *infoCount;
    *infoCount = n;
    if (n > cap)
        return leave(NVML_ERROR_INSUFFICIENT_SIZE);
    if (n > 0)
        collect_procs(&c, graphics, infos, cap);
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                            nvmlProcessInfo_t *infos)
{
    return running_processes("nvmlDeviceGetComputeRunningProcesses_v3", false, device, infoCount, infos);
}

EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                             nvmlProcessInfo_t *infos)
{
    return running_processes("nvmlDeviceGetGraphicsRunningProcesses_v3", true, device, infoCount, infos);
}

EXPORT nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device, nvmlProcessUtilizationSample_t *utilization,
                                                    unsigned int *processSamplesCount,
                                                    unsigned long long lastSeenTimeStamp)
{
    struct call c;
    nvmlReturn_t r = enter_dev("nvmlDeviceGetProcessUtilization", device, false, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (processSamplesCount == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (mig_enabled(c.g))
        return leave(NVML_ERROR_NOT_SUPPORTED);
    unsigned int n = 0;
    for (int i = 0; i < c.g->nputil; i++)
        if (c.g->putil[i].ts > lastSeenTimeStamp)
            n++;
    if (n == 0)
        return leave(NVML_ERROR_NOT_FOUND);
    if (utilization == NULL || *processSamplesCount < n) {
        *processSamplesCount = n;
        return leave(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    unsigned int k = 0;
    for (int i = 0; i < c.g->nputil; i++) {
        const struct putil *p = &c.g->putil[i];
        if (p->ts <= lastSeenTimeStamp)
            continue;
        utilization[k].pid = p->pid;
        utilization[k].timeStamp = p->ts;
        utilization[k].smUtil = p->sm;
        utilization[k].memUtil = p->mem;
        utilization[k].encUtil = p->enc;
        utilization[k].decUtil = p->dec;
        k++;
    }
    *processSamplesCount = n;
    return leave(NVML_SUCCESS);
}

/* ---- MIG --------------------------------------------------------------------------------------------- */

EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode, unsigned int *pendingMode)
{
    struct call c;
    nvmlReturn_t r = enter_dev("nvmlDeviceGetMigMode", device, false, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (currentMode == NULL || pendingMode == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!c.g->has_mig_mode)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    *currentMode = c.g->mig_current;
    *pendingMode = c.g->mig_pending;
    return leave(NVML_SUCCESS);
}

static unsigned int max_mig(const struct gpu *g)
{
    unsigned long long n = g->mig_max.set ? g->mig_max.v : DEFAULT_MAX_MIG;
    return n > MAX_MIG ? MAX_MIG : (unsigned int)n;
}

EXPORT nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count)
{
    struct call c;
    nvmlReturn_t r = enter_dev("nvmlDeviceGetMaxMigDeviceCount", device, false, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (count == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!c.g->has_mig_mode)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    *count = max_mig(c.g);
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                        nvmlDevice_t *migDevice)
{
    struct call c;
    nvmlReturn_t r = enter_dev("nvmlDeviceGetMigDeviceHandleByIndex", device, true, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (c.m != NULL || migDevice == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!mig_enabled(c.g))
        return leave(NVML_ERROR_NOT_SUPPORTED);
    if (index >= max_mig(c.g))
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!c.g->mig[index].present)
        return leave(NVML_ERROR_NOT_FOUND);
    *migDevice = handle_of(c.gi, (int)index);
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *isMigDevice)
{
    struct call c;
    nvmlReturn_t r = enter_dev("nvmlDeviceIsMigDeviceHandle", device, true, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (isMigDevice == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *isMigDevice = c.m != NULL ? 1u : 0u;
    return leave(NVML_SUCCESS);
}

static nvmlReturn_t instance_id(const char *fn, nvmlDevice_t device, unsigned int *id, bool compute)
{
    struct call c;
    nvmlReturn_t r = enter_dev(fn, device, true, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (id == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (c.m == NULL)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    const opt_t *o = compute ? &c.m->ci : &c.m->gi;
    if (!o->set)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    *id = (unsigned int)o->v;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id)
{
    return instance_id("nvmlDeviceGetGpuInstanceId", device, id, false);
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device, unsigned int *id)
{
    return instance_id("nvmlDeviceGetComputeInstanceId", device, id, true);
}

EXPORT nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t migDevice, nvmlDevice_t *device)
{
    struct call c;
    nvmlReturn_t r = enter_dev("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", migDevice, true, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (c.m == NULL || device == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *device = handle_of(c.gi, -1);
    return leave(NVML_SUCCESS);
}

/* ---- events ------------------------------------------------------------------------------------------ */

static bool set_live(const struct nvmlEventSet_st *set)
{
    for (const struct nvmlEventSet_st *s = g_sets; s != NULL; s = s->next)
        if (s == set)
            return true;
    return false;
}

EXPORT nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set)
{
    struct call c;
    nvmlReturn_t r = enter_sys("nvmlEventSetCreate", &c);
    if (r != NVML_SUCCESS)
        return r;
    if (set == NULL)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    struct nvmlEventSet_st *s = calloc(1, sizeof *s);
    if (s == NULL)
        return leave(20); /* NVML_ERROR_MEMORY */
    s->next = g_sets;
    g_sets = s;
    *set = s;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long eventTypes, nvmlEventSet_t set)
{
    struct call c;
    nvmlReturn_t r = enter_dev("nvmlDeviceRegisterEvents", device, false, &c);
    if (r != NVML_SUCCESS)
        return r;
    if (set == NULL || !set_live(set))
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!c.g->supported_events.set || (eventTypes & ~c.g->supported_events.v) != 0)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    set->mask[c.gi] |= eventTypes;
    return leave(NVML_SUCCESS);
}

static bool was_delivered(const struct nvmlEventSet_st *set, int gpu, unsigned long long seq)
{
    for (size_t i = 0; i < set->ndelivered; i++)
        if (set->delivered[i].gpu == gpu && set->delivered[i].seq == seq)
            return true;
    return false;
}

static bool mark_delivered(struct nvmlEventSet_st *set, int gpu, unsigned long long seq)
{
    if (set->ndelivered == set->cap) {
        size_t cap = set->cap ? set->cap * 2 : 32;
        struct delivered *d = realloc(set->delivered, cap * sizeof *d);
        if (d == NULL)
            return false;
        set->delivered = d;
        set->cap = cap;
    }
    set->delivered[set->ndelivered++] = (struct delivered){gpu, seq};
    return true;
}

/* The undelivered Xid with the lowest seq over the set's registered GPUs. Called with g_lock held. */
static bool next_event(struct nvmlEventSet_st *set, nvmlEventData_t *data)
{
    int best_gpu = -1;
    const struct xid *best = NULL;
    for (int gi = 0; gi < g_sc->ngpus; gi++) {
        if ((set->mask[gi] & NVML_EVENT_TYPE_XID_CRITICAL_ERROR) == 0)
            continue;
        const struct gpu *g = &g_sc->gpu[gi];
        for (int i = 0; i < g->nxid; i++) {
            const struct xid *x = &g->xid[i];
            if ((best == NULL || x->seq < best->seq) && !was_delivered(set, gi, x->seq)) {
                best = x;
                best_gpu = gi;
            }
        }
    }
    if (best == NULL || !mark_delivered(set, best_gpu, best->seq))
        return false;
    data->device = handle_of(best_gpu, -1);
    data->eventType = NVML_EVENT_TYPE_XID_CRITICAL_ERROR;
    data->eventData = best->xid;
    data->gpuInstanceId = best->gi;
    data->computeInstanceId = best->ci;
    return true;
}

/* An error injected for the wait: globally, or on any GPU registered in the set ("error * 15" = lost). */
static bool wait_error(const struct nvmlEventSet_st *set, unsigned int *code)
{
    for (int gi = 0; gi < g_sc->ngpus; gi++)
        if (set->mask[gi] != 0 && find_rule(&g_sc->gpu[gi].errors, "nvmlEventSetWait_v2", code))
            return true;
    return find_rule(&g_sc->errors, "nvmlEventSetWait_v2", code);
}

EXPORT nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms)
{
    long long deadline = monotonic_us() + (long long)timeoutms * 1000LL;
    pthread_mutex_lock(&g_lock);
    if (g_refcount == 0)
        return leave(NVML_ERROR_UNINITIALIZED);
    if (set == NULL || data == NULL || !set_live(set))
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    set->waiters++;
    nvmlReturn_t r;
    for (;;) {
        reload_locked();
        unsigned int code;
        if (g_refcount == 0) {
            r = NVML_ERROR_UNINITIALIZED;
            break;
        }
        if (g_sc == NULL) {
            r = NVML_ERROR_DRIVER_NOT_LOADED;
            break;
        }
        if (set->freed) {
            r = NVML_ERROR_INVALID_ARGUMENT;
            break;
        }
        if (wait_error(set, &code)) {
            r = (nvmlReturn_t)code;
            break;
        }
        if (next_event(set, data)) {
            r = NVML_SUCCESS;
            break;
        }
        long long left = deadline - monotonic_us();
        if (left <= 0) {
            r = NVML_ERROR_TIMEOUT;
            break;
        }
        pthread_mutex_unlock(&g_lock); /* never sleep holding the lock */
        sleep_us(left < WAIT_POLL_MS * 1000LL ? left : WAIT_POLL_MS * 1000LL);
        pthread_mutex_lock(&g_lock);
    }
    set->waiters--;
    if (set->freed && set->waiters == 0) {
        free(set->delivered);
        free(set);
    }
    return leave(r);
}

EXPORT nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set)
{
    pthread_mutex_lock(&g_lock);
    if (g_refcount == 0)
        return leave(NVML_ERROR_UNINITIALIZED);
    if (set == NULL || !set_live(set))
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    for (struct nvmlEventSet_st **p = &g_sets; *p != NULL; p = &(*p)->next)
        if (*p == set) {
            *p = set->next;
            break;
        }
    if (set->waiters > 0) {
        set->freed = true; /* the last waiter frees it */
    } else {
        free(set->delivered);
        free(set);
    }
    return leave(NVML_SUCCESS);
}
