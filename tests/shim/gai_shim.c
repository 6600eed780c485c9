/*
 * gai_shim — a test seam for name resolution, loaded with LD_PRELOAD by the
 * end-to-end tests (tests/e2e/test_dns.py); never part of an installed
 * program.
 *
 * getaddrinfo for a name under .invalid (RFC 6761: such names never resolve,
 * so nothing real is shadowed) is answered from the hosts file named by
 * DW_TEST_HOSTS_FILE ("ADDRESS NAME..." lines, '#' comments, every line
 * naming it adds an address in file order; read at every call so a test can
 * rewrite it), after DW_TEST_RESOLVE_DELAY_MS ms when
 * set (a slow resolver); a name the file lacks fails with EAI_NONAME. Every
 * other call goes to the real getaddrinfo untouched. This lets a test change
 * what a name resolves to without touching /etc/hosts (shared by the whole
 * machine), and works the same on any daemon build, old or new.
 */
#include <dlfcn.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
		struct addrinfo **res);

static int from_file(const char *path, const char *node, const char *service,
		     const struct addrinfo *hints, struct addrinfo **res, gai_fn real)
{
	FILE *f = fopen(path, "r");
	char line[1024];
	struct addrinfo *last = NULL;
	int rc = EAI_NONAME;

	*res = NULL;
	if (!f)
		return EAI_NONAME;
	/* every line naming node adds its address, in file order */
	while (fgets(line, sizeof(line), f)) {
		char *save = NULL, *addr, *name;

		line[strcspn(line, "#\r\n")] = '\0';
		addr = strtok_r(line, " \t", &save);
		if (!addr)
			continue;
		while ((name = strtok_r(NULL, " \t", &save)))
			if (strcasecmp(name, node) == 0) {
				struct addrinfo h;
				struct addrinfo *got = NULL;

				memset(&h, 0, sizeof(h));
				if (hints)
					h = *hints;
				h.ai_flags |= AI_NUMERICHOST;
				if (real(addr, service, &h, &got) == 0 && got) {
					/* glibc's freeaddrinfo frees a chain entry by entry */
					if (last)
						last->ai_next = got;
					else
						*res = got;
					for (last = got; last->ai_next; last = last->ai_next)
						;
					rc = 0;
				}
				break;
			}
	}
	fclose(f);
	return rc;
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
		struct addrinfo **res)
{
	gai_fn real = (gai_fn)dlsym(RTLD_NEXT, "getaddrinfo");
	const char *file = getenv("DW_TEST_HOSTS_FILE");
	const char *delay = getenv("DW_TEST_RESOLVE_DELAY_MS");
	size_t n = node ? strlen(node) : 0;

	if (!real)
		return EAI_FAIL;
	if (!file || n < 8 || strcasecmp(node + n - 8, ".invalid") != 0)
		return real(node, service, hints, res);
	if (delay && atol(delay) > 0) {
		long ms = atol(delay);
		struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};

		while (nanosleep(&ts, &ts) != 0)
			;
	}
	return from_file(file, node, service, hints, res, real);
}
