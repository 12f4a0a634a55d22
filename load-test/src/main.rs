fn main() {
    println!("load-test: see issue #4");
}
