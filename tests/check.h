/* SPDX-License-Identifier: GPL-2.0-or-later */
/* CHECK(cond, fmt, ...): the C test harnesses' assertion; names the place and the condition, then
 * aborts, so a sanitizer or the calling pytest shows where. */
#ifndef NFLOGD_TESTS_CHECK_H
#define NFLOGD_TESTS_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond, ...)                                                                      \
	do {                                                                                  \
		if (!(cond)) {                                                                \
			fprintf(stderr, "%s:%d: %s: ", __FILE__, __LINE__, #cond);           \
			fprintf(stderr, __VA_ARGS__);                                         \
			fputc('\n', stderr);                                                  \
			abort();                                                              \
		}                                                                             \
	} while (0)

#endif
