/**
 * Fast variant of the randomized two-user isolation check (the long one is test/chaos/isolation.test.ts).
 */
import { defineIsolationSuite } from './support/isolation-suite.js';

defineIsolationSuite('two-user isolation (fast)', 25, 20);
