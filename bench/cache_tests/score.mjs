// Scores a results file of http-cache-tests (cache-tests.fyi) the way its pages do: a
// required test passes when its result is true and every test it depends on passed.
// Usage: node score.mjs SUITE_DIR RESULTS.json [--list]
import fs from 'fs'
import path from 'path'
import { pathToFileURL } from 'url'

const [suiteDir, resultsFile, flag] = process.argv.slice(2)
const tests = (await import(pathToFileURL(path.join(suiteDir, 'tests', 'index.mjs')))).default
const results = JSON.parse(fs.readFileSync(resultsFile, 'utf8'))
const byId = {}
for (const s of tests) for (const t of s.tests) byId[t.id] = t
const memo = {}
function passes (id) {
  if (id in memo) return memo[id]
  memo[id] = false
  const r = results[id]
  let ok = r === true
  if (ok && byId[id] && byId[id].depends_on) ok = byId[id].depends_on.every(passes)
  memo[id] = ok
  return ok
}
const required = Object.values(byId).filter(t => t.kind === undefined || t.kind === 'required')
const failed = required.filter(t => !passes(t.id))
console.log(JSON.stringify({ required: required.length, passed: required.length - failed.length }))
if (flag === '--list') {
  for (const t of failed) {
    const r = results[t.id]
    const why = r === undefined ? 'untested' : r === true ? 'dependency failed' : JSON.stringify(r)
    console.log(`FAIL ${t.id}: ${why}`)
  }
}
