// Parse queries with the Lezer grammars of Grafana's query editors; tests/stack/grammars.py runs this.
//
// stdin:  [{"language": "logql" | "traceql" | "promql", "query": "...", "where": "..."}, ...]
// stdout: the same list, in the same order, each item with "errors": [{"from": n, "to": n}, ...], the
//         character ranges of the tree's error (⚠) nodes; an empty list means the query parses.
// An unknown language exits 2 with a message on stderr.
import { readFileSync } from 'node:fs';

import { parser as logql } from '@grafana/lezer-logql';
import { parser as traceql } from '@grafana/lezer-traceql';
import { parser as promql } from '@prometheus-io/lezer-promql';

const PARSERS = { logql, traceql, promql };

function errorRanges(parser, query) {
  const errors = [];
  parser.parse(query).iterate({
    enter(node) {
      if (node.type.isError) {
        errors.push({ from: node.from, to: node.to });
      }
    },
  });
  return errors;
}

const items = JSON.parse(readFileSync(0, 'utf8'));
const unknown = items.filter((item) => !(item.language in PARSERS));
if (unknown.length > 0) {
  process.stderr.write(`no grammar for ${JSON.stringify(unknown)}; known: ${Object.keys(PARSERS)}\n`);
  process.exit(2);
}
const results = items.map((item) => ({ ...item, errors: errorRanges(PARSERS[item.language], item.query) }));
process.stdout.write(JSON.stringify(results));
