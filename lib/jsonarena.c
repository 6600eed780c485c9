/*
 * jsonarena.c — see jsonarena.h.
 */
#include "jsonarena.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "dw.h"

#if defined(__SANITIZE_ADDRESS__)
#define ARENA_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ARENA_ASAN 1
#endif
#endif
#ifdef ARENA_ASAN
#include <sanitizer/asan_interface.h>
#define poison(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define unpoison(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define poison(p, n) ((void)(p), (void)(n))
#define unpoison(p, n) ((void)(p), (void)(n))
#endif

#define BLOCK_SIZE 65536
#define ALIGN 16

struct json_arena_block {
	struct json_arena_block *next;
	char *start, *end;
};

/* The arena this thread allocates jansson values from; NULL: malloc. Set
 * only between json_arena_begin and json_arena_end, by the thread itself:
 * jansson's allocation hooks take no context, so this is the one way. */
static __thread struct json_arena *current;

static bool owns(const struct json_arena *a, const void *p)
{
	for (const struct json_arena_block *b = a->blocks; b; b = b->next)
		if ((const char *)p >= b->start && (const char *)p < b->end)
			return true;
	return false;
}

/*
 * Each new block is twice the one before (up to BLOCK_SIZE << BLOCK_GROWTH):
 * a free() asks owns(), which walks the list, and a 1,000-row telemetry batch
 * in 64 KiB blocks made that walk a fifth of the proxy's CPU.
 */
#define BLOCK_GROWTH 8

static void *block_new(struct json_arena *a, size_t need)
{
	size_t nblocks = 0, size;
	struct json_arena_block *b;

	for (b = a->blocks; b && nblocks < BLOCK_GROWTH; b = b->next)
		nblocks++;
	size = (size_t)BLOCK_SIZE << nblocks;
	if (need + sizeof(struct json_arena_block) + ALIGN > size)
		size = need + sizeof(struct json_arena_block) + ALIGN;
	b = malloc(size);
	uintptr_t start;

	if (!b)
		return NULL;
	start = ((uintptr_t)(b + 1) + ALIGN - 1) & ~(uintptr_t)(ALIGN - 1);
	b->start = (char *)start;
	b->end = (char *)b + size;
	b->next = a->blocks;
	a->blocks = b;
	a->cur = b->start;
	a->end = b->end;
	poison(b->start, (size_t)(b->end - b->start)); /* unused: ASan reports a stray read */
	return b;
}

static void *arena_malloc(size_t n)
{
	struct json_arena *a = current;
	void *p;

	if (!a)
		return malloc(n);
	n = (n + ALIGN - 1) & ~(size_t)(ALIGN - 1);
	if ((size_t)(a->end - a->cur) < n && !block_new(a, n))
		return NULL;
	p = a->cur;
	unpoison(p, n);
	a->cur += n;
	a->used += n;
	return p;
}

static void arena_free(void *p)
{
	struct json_arena *a = current;

	if (!p || (a && owns(a, p)))
		return; /* the arena's memory goes back all at once */
	free(p);
}

void json_arena_install(void)
{
	json_set_alloc_funcs(arena_malloc, arena_free);
}

void json_arena_begin(struct json_arena *a)
{
	current = a;
	a->used = 0;
	if (a->blocks) {
		a->cur = a->blocks->start;
		a->end = a->blocks->end;
	}
}

void json_arena_end(struct json_arena *a)
{
	struct json_arena_block *keep = a->blocks;

	current = NULL;
	if (!keep)
		return;
	/* keep the oldest (a standard block), free what a big value added */
	while (keep->next) {
		struct json_arena_block *b = keep;
		keep = keep->next;
		unpoison(b->start, (size_t)(b->end - b->start));
		free(b);
	}
	a->blocks = keep;
	a->cur = keep->start;
	a->end = keep->end;
	/* a value kept past the end is a use-after-free: ASan says so */
	poison(keep->start, (size_t)(keep->end - keep->start));
}

void json_arena_free(struct json_arena *a)
{
	if (current == a)
		current = NULL;
	while (a->blocks) {
		struct json_arena_block *b = a->blocks;
		a->blocks = b->next;
		unpoison(b->start, (size_t)(b->end - b->start));
		free(b);
	}
	a->cur = a->end = NULL;
}
