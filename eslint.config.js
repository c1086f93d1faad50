// ESLint flat config: typescript-eslint's recommended rules (syntax only, no
// type information, so `npm run lint` stays a few seconds), unused names as
// errors unless they start with _, and imports before any other statement.
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  {
    ignores: [
      'dist/', 'node_modules/', 'addon/build/', 'firmware/build/',
      'guest/build/', 'guest/out/', '**/*.d.ts',
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: 'module',
      globals: { ...globals.node },
    },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', {
        args: 'after-used',
        argsIgnorePattern: '^_',
        varsIgnorePattern: '^_',
        caughtErrors: 'none',
        destructuredArrayIgnorePattern: '^_',
        ignoreRestSiblings: true,
      }],
      // `let [a, b]` where only b is reassigned, and a `let` a closure reads before its one assignment, stay `let`.
      'prefer-const': ['error', { destructuring: 'all', ignoreReadBeforeAssign: true }],
      'no-empty': ['error', { allowEmptyCatch: true }],
      // `cond ? a() : b()` as a statement (the fuzz tests pick an access that way).
      '@typescript-eslint/no-unused-expressions': ['error', { allowTernary: true }],
      // import/first without the plugin: an import after other statements is reported.
      'no-restricted-syntax': ['error', {
        selector: 'Program > :not(ImportDeclaration) ~ ImportDeclaration',
        message: 'Imports go first, before any other statement (import/first).',
      }],
    },
  },
  {
    // Tests read JSON reports whose shape the assertions check.
    files: ['test/**/*.ts'],
    rules: { '@typescript-eslint/no-explicit-any': 'off' },
  },
);
