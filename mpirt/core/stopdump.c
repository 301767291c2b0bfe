/* mpirt._stopdump: stack dumps that are written whole, and that say so.
 *
 * faulthandler's chaining handler is installed with SA_NODEFER, and its dump is not reentrant:
 * a second SIGTERM that arrives while the first one's dump is being written (Open MPI 4's
 * mpirun sends its own as soon as another rank has died of ours) skips the dump and goes
 * straight on to the default action, which ends the process with half a dump. This handler
 * keeps the stop signals and the dump signal blocked while it runs: it calls faulthandler's
 * handler for the dump signal directly (faulthandler writes the dump), writes an end mark (what
 * follows the last mark was cut short, by a SIGKILL), then, for a stop signal, does what the
 * signal did before. A second signal waits until the dump is written: in this thread by the
 * signal mask, in another (an MPI progress thread the kernel chose for it) by a lock, which a
 * signal that ends the process keeps, so no dump starts that its end would cut.
 * Only async-signal-safe calls in the handler: sigaction, raise, write, nanosleep, atomics, and
 * the handlers it calls.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static struct sigaction previous[NSIG];
static int armed[NSIG];
static struct sigaction dump;
static int dump_signal;
static int dump_fd = -1;
static char mark[64];
static size_t mark_size;
static atomic_int busy;

static void call(const struct sigaction* a, int sig, siginfo_t* info, void* context) {
  if (a->sa_flags & SA_SIGINFO)
    a->sa_sigaction(sig, info, context);
  else
    a->sa_handler(sig);
}

static void on_signal(int sig, siginfo_t* info, void* context) {
  int saved = errno;
  const struct timespec pause = {0, 1000000};
  for (int expected = 0; !atomic_compare_exchange_weak(&busy, &expected, 1); expected = 0)
    nanosleep(&pause, NULL);
  call(&dump, dump_signal, info, context);
  for (size_t done = 0; done < mark_size;) {
    ssize_t n = write(dump_fd, mark + done, mark_size - done);
    if (n > 0)
      done += (size_t)n;
    else if (!(n < 0 && errno == EINTR))
      break;
  }
  const struct sigaction* before = &previous[sig];
  if (sig != dump_signal && !(before->sa_flags & SA_SIGINFO) && before->sa_handler == SIG_DFL) {
    /* The default action (the end of the process): due as soon as this handler returns. */
    sigaction(sig, before, NULL);
    raise(sig);
  } else {
    atomic_store(&busy, 0);
    if (sig != dump_signal && ((before->sa_flags & SA_SIGINFO) || before->sa_handler != SIG_IGN))
      call(before, sig, info, context);
  }
  errno = saved;
}

/* A child forked while another thread of its parent held the lock (a DataLoader worker) has no
 * such thread: it starts unlocked. */
static void unlock_in_child(void) { atomic_store(&busy, 0); }

/* arm(stop_signals, dump_signal, fd, mark): faulthandler must already be registered for
 * dump_signal, writing to fd, where each dump is followed by mark. */
static PyObject* py_arm(PyObject* self, PyObject* args) {
  PyObject* stops;
  const char* text;
  Py_ssize_t size;
  int sig_dump, fd;
  (void)self;
  if (!PyArg_ParseTuple(args, "O!iiy#", &PyTuple_Type, &stops, &sig_dump, &fd, &text, &size)) return NULL;
  if (sig_dump <= 0 || sig_dump >= NSIG) return PyErr_Format(PyExc_ValueError, "no signal %d", sig_dump);
  if (size <= 0 || (size_t)size > sizeof mark) return PyErr_Format(PyExc_ValueError, "the mark must be 1 to %d bytes", (int)sizeof mark);
  if (dump_fd >= 0) return PyErr_Format(PyExc_RuntimeError, "already armed: disarm() first");
  struct sigaction handler;
  if (sigaction(sig_dump, NULL, &handler) != 0) return PyErr_SetFromErrno(PyExc_OSError);
  if (!(handler.sa_flags & SA_SIGINFO) && (handler.sa_handler == SIG_DFL || handler.sa_handler == SIG_IGN))
    return PyErr_Format(PyExc_RuntimeError, "signal %d has no handler to write the dump: "
                        "register faulthandler for it first", sig_dump);
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_sigaction = on_signal;
  action.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
  sigemptyset(&action.sa_mask);
  Py_ssize_t n = PyTuple_GET_SIZE(stops);
  int sigs[NSIG];
  if (n >= NSIG - 1) return PyErr_Format(PyExc_ValueError, "too many signals");
  for (Py_ssize_t i = 0; i < n; i++) {
    int sig = (int)PyLong_AsLong(PyTuple_GET_ITEM(stops, i));
    if (sig == -1 && PyErr_Occurred()) return NULL;
    if (sig <= 0 || sig >= NSIG || sig == sig_dump) return PyErr_Format(PyExc_ValueError, "bad stop signal %d", sig);
    sigs[i] = sig;
    sigaddset(&action.sa_mask, sig);  /* every signal waits while any one is handled */
  }
  dump = handler;
  dump_signal = sig_dump;
  dump_fd = fd;
  memcpy(mark, text, (size_t)size);
  mark_size = (size_t)size;
  sigaddset(&action.sa_mask, dump_signal);
  sigs[n++] = dump_signal;  /* its previous handler is faulthandler's: disarm() gives it back */
  for (Py_ssize_t i = 0; i < n; i++) {
    int sig = sigs[i];
    struct sigaction before;
    if (sigaction(sig, &action, &before) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    previous[sig] = before;
    armed[sig] = 1;
  }
  Py_RETURN_NONE;
}

/* disarm(): every signal does again what it did before arm(). */
static PyObject* py_disarm(PyObject* self, PyObject* noargs) {
  (void)self;
  (void)noargs;
  for (int sig = 1; sig < NSIG; sig++) {
    if (!armed[sig]) continue;
    if (sigaction(sig, &previous[sig], NULL) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    armed[sig] = 0;
  }
  dump_fd = -1;
  Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"arm", py_arm, METH_VARARGS, "arm(stop_signals, dump_signal, fd, mark): dump, mark, then (a stop signal) do what it did before."},
    {"disarm", py_disarm, METH_NOARGS, "disarm(): the signals do what they did before arm()."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_stopdump", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__stopdump(void) {
  if (pthread_atfork(NULL, NULL, unlock_in_child) != 0) return PyErr_Format(PyExc_OSError, "pthread_atfork failed");
  return PyModule_Create(&module);
}
