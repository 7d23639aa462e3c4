#!/bin/sh
# The project's test: the first 15 numbers of FizzBuzz.
expected="1 2 Fizz 4 Buzz Fizz 7 8 Fizz Buzz 11 Fizz 13 14 FizzBuzz"
actual=$(sh fizzbuzz.sh 15 | tr '\n' ' ' | sed 's/ $//')
if [ "$actual" = "$expected" ]; then
  echo "PASS: fizzbuzz 1..15"
else
  echo "FAIL: fizzbuzz 1..15"
  echo "  expected: $expected"
  echo "  actual:   $actual"
  exit 1
fi
