/* The tier matrix, defined once: validate.c (the default environment ids), core.TIERS (read by
 * lua/cxone/tiers.lua) and cxone-sim (simc.tiers: the environments every action has) all expand
 * this list. Promotion order; X(name, environment id, applying to it queues a build). */
#ifndef CXONE_TIERS_H
#define CXONE_TIERS_H

#define CXONE_TIER_MATRIX(X)          \
    X("development", "dev", 1)        \
    X("staging", "staging", 1)        \
    X("production", "prod", 0)

#endif
