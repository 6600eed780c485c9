/*
 * spool_files.c — the replay queue's files below the log (spool_files.h).
 */
#include "spool_files.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "spool_frame.h"

char *sfile_seg_path(const char *dir, uint64_t id)
{
	char *s;

	if (asprintf(&s, "%s/seg-%016" PRIx64 ".log", dir, id) < 0)
		abort();
	return s;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

int sfile_list_segs(const char *dir, uint64_t **ids, size_t *n, struct dw_err *err)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	size_t cap = 0;

	*n = 0;
	if (!d) {
		dw_err_set(err, "queue %s: %s", dir, strerror(errno));
		return -1;
	}
	while ((de = readdir(d))) {
		char *end;
		uint64_t id;
		if (strncmp(de->d_name, "seg-", 4) != 0 || strlen(de->d_name) != 24 ||
		    strcmp(de->d_name + 20, ".log") != 0)
			continue;
		errno = 0;
		id = strtoull(de->d_name + 4, &end, 16);
		if (errno || end != de->d_name + 20 || id == 0)
			continue;
		if (*n == cap) {
			cap = cap ? cap * 2 : 16;
			*ids = dw_realloc(*ids, cap * sizeof(**ids));
		}
		(*ids)[(*n)++] = id;
	}
	closedir(d);
	if (*n)
		qsort(*ids, *n, sizeof(**ids), cmp_u64);
	return 0;
}

int sfile_open_seg(const char *dir, uint64_t id, bool readonly, bool create)
{
	char *path = sfile_seg_path(dir, id);
	int flags = readonly ? O_RDONLY : O_RDWR | O_APPEND;
	int fd;

	if (create)
		flags |= O_CREAT | O_EXCL;
	fd = open(path, flags | O_CLOEXEC, 0640);
	free(path);
	return fd;
}

void sfile_fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd >= 0) {
		(void)fsync(fd);
		close(fd);
	}
}

int sfile_mkdir_p(const char *dir)
{
	char *p = dw_strdup(dir);
	int r = 0;

	for (char *s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(p, 0750) < 0 && errno != EEXIST) {
			r = -1;
			break;
		}
		*s = '/';
	}
	if (r == 0 && mkdir(p, 0750) < 0 && errno != EEXIST)
		r = -1;
	free(p);
	return r;
}

unsigned char *sfile_read(int fd, uint64_t off, size_t n, struct dw_err *err)
{
	unsigned char *b = dw_malloc(n ? n : 1);
	size_t got = 0;

	while (got < n) {
		ssize_t r = pread(fd, b + got, n - got, (off_t)(off + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			dw_err_set(err, "read: %s", r < 0 ? strerror(errno) : "unexpected end of file");
			free(b);
			return NULL;
		}
		got += (size_t)r;
	}
	return b;
}

int sfile_flock(int fd, int op)
{
	int r;

	while ((r = flock(fd, op)) < 0 && errno == EINTR)
		;
	return r;
}

#define MARK_MAGIC 0x314d5744u /* "DWM1" */
#define MARK_LEN 32

static void put64le(unsigned char *p, uint64_t v)
{
	sf_put32(p, (uint32_t)v);
	sf_put32(p + 4, (uint32_t)(v >> 32));
}

int sfile_mark_store(int fd, const struct sfile_mark *m)
{
	unsigned char b[MARK_LEN];

	sf_put32(b, MARK_MAGIC);
	put64le(b + 4, m->tail_id);
	put64le(b + 12, m->tail_end);
	put64le(b + 20, m->next_seq);
	sf_put32(b + 28, sf_crc32c(0xffffffffu, b, 28) ^ 0xffffffffu);
	if (pwrite(fd, b, MARK_LEN, 0) != MARK_LEN) {
		if (!errno)
			errno = EIO;
		return -1;
	}
	return 0;
}

bool sfile_mark_load(int fd, const char *dir, struct sfile_mark *m)
{
	unsigned char b[MARK_LEN];
	char path[PATH_MAX];
	int rfd = fd;

	if (rfd < 0) {
		snprintf(path, sizeof(path), "%s/MARK", dir);
		rfd = open(path, O_RDONLY | O_CLOEXEC);
		if (rfd < 0)
			return false;
	}
	ssize_t r = pread(rfd, b, MARK_LEN, 0);
	if (rfd != fd)
		close(rfd);
	if (r != MARK_LEN || sf_get32(b) != MARK_MAGIC ||
	    sf_get32(b + 28) != (sf_crc32c(0xffffffffu, b, 28) ^ 0xffffffffu))
		return false;
	m->tail_id = sf_get64(b + 4);
	m->tail_end = sf_get64(b + 12);
	m->next_seq = sf_get64(b + 20);
	return true;
}
